"""Pushes an artifact with oras (Python) whose subject is an image in the registry, then lists the
subject's referrers and checks the artifact is among them. Usage: oras_referrers.py HOST:PORT REPO TAG
"""
import json
import sys
import tempfile
import os
import urllib.request

import oras.client
import oras.oci

host, repo, tag = sys.argv[1:4]
base = f"http://{host}/v2/{repo}"

req = urllib.request.Request(
    f"{base}/manifests/{tag}",
    headers={"Accept": "application/vnd.oci.image.manifest.v1+json"},
)
with urllib.request.urlopen(req) as r:
    body = r.read()
    subject = oras.oci.Subject(
        mediaType=r.headers["Content-Type"],
        digest=r.headers["Docker-Content-Digest"],
        size=len(body),
    )

client = oras.client.OrasClient(hostname=host, insecure=True)
with tempfile.TemporaryDirectory() as d:
    path = os.path.join(d, "sbom.json")
    with open(path, "w") as f:
        json.dump({"sbom": "example", "for": subject.digest}, f)
    old = os.getcwd()
    os.chdir(d)
    try:
        resp = client.push(
            target=f"{host}/{repo}:sbom",
            files=["sbom.json"],
            subject=subject,
            manifest_annotations={"org.example.kind": "sbom"},
        )
    finally:
        os.chdir(old)
    assert resp.status_code == 201, resp.text
    assert resp.headers.get("OCI-Subject") == subject.digest, dict(resp.headers)
    pushed = resp.headers["Docker-Content-Digest"]

with urllib.request.urlopen(f"{base}/referrers/{subject.digest}") as r:
    index = json.load(r)
    assert r.headers["Content-Type"] == "application/vnd.oci.image.index.v1+json"
digests = [m["digest"] for m in index["manifests"]]
assert pushed in digests, (pushed, index)
entry = next(m for m in index["manifests"] if m["digest"] == pushed)
assert entry["annotations"]["org.example.kind"] == "sbom", entry

# Pull the artifact back and compare.
with tempfile.TemporaryDirectory() as out:
    files = client.pull(target=f"{host}/{repo}:sbom", outdir=out)
    got = json.load(open(files[0]))
    assert got == {"sbom": "example", "for": subject.digest}, got
print("oras: pushed", pushed, "with subject", subject.digest, "and found it among", len(digests), "referrers")
