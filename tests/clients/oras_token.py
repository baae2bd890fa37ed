"""oras (Python) against the edge in token mode: logs in, pushes an artifact to private/oras and
pulls it back; then, with no login, pulls public/oras (pushed with the login) and fails to read
private/oras. Usage: oras_token.py HOST:PORT CA_FILE USER PASSWORD
"""
import json
import os
import sys
import tempfile

import oras.auth.utils
import oras.client

host, ca, user, password = sys.argv[1:5]


def push(client, target, payload):
    with tempfile.TemporaryDirectory() as d:
        path = os.path.join(d, "artifact.json")
        with open(path, "w") as f:
            json.dump(payload, f)
        old = os.getcwd()
        os.chdir(d)
        try:
            resp = client.push(target=target, files=["artifact.json"])
        finally:
            os.chdir(old)
    assert resp.status_code == 201, (resp.status_code, resp.text)
    return resp.headers["Docker-Content-Digest"]


def pull(client, target):
    with tempfile.TemporaryDirectory() as out:
        files = client.pull(target=target, outdir=out)
        with open(files[0]) as f:
            return json.load(f)


digests = []
for repo in ["private/oras", "public/oras"]:
    # oras-py keeps the first token it gets and asks for another only after a 403, while
    # registries (Distribution, and this edge) answer an insufficient scope with 401 and a new
    # challenge, as Docker's clients expect. Its push starts with a HEAD (a pull scope), so it is
    # given a token for the push first, through its own token request.
    client = oras.client.OrasClient(hostname=host, tls_verify=ca)
    # What `login` does for the requests (it also asks a Docker daemon to log in, which is not
    # what is tested here).
    client.auth.set_basic_auth(user, password)
    challenge = oras.auth.utils.parse_auth_header(
        f'Bearer realm="https://{host}/token",service="registry-edge",scope="repository:{repo}:pull,push"'
    )
    client.auth.set_token_auth(client.auth.request_token(challenge))
    digests.append(push(client, f"{host}/{repo}:v1", {"repo": repo}))
    assert pull(client, f"{host}/{repo}:v1") == {"repo": repo}

if True:

    anonymous = oras.client.OrasClient(hostname=host, tls_verify=ca)
    assert pull(anonymous, f"{host}/public/oras:v1") == {"repo": "public/oras"}
    refused = oras.client.OrasClient(hostname=host, tls_verify=ca)
    try:
        pull(refused, f"{host}/private/oras:v1")
    except Exception as e:  # oras raises on the 401
        print("oras: anonymous read of private/oras refused:", type(e).__name__)
    else:
        raise AssertionError("an anonymous client read private/oras")
print("oras: pushed", " ".join(digests), "and pulled public/oras anonymously")
