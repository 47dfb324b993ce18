"""A partner that signs its requests with Python's requests-http-signature
(RFC 9421, with a Content-Digest of the body), for the broker's signed-request
tests. One JSON line per case on stdout: {"case", "status", "body"}.

usage: sign_requests.py URL CERT KEY CA ALG SIGN_KEY KEYID OTHER_KEY OTHER_KEYID [CASES]
  URL        https://localhost:PORT/v1/transfers?ref=1
  CERT, KEY  the partner's TLS client certificate and key
  CA         the roots to trust for the broker
  ALG        ecdsa-p256-sha256 | ed25519 | rsa-pss-sha512
  SIGN_KEY   the private key (PEM) that signs, KEYID its keyid
  OTHER_*    another partner's key and keyid
  CASES      comma-separated subset of: ok,tampered,stale,replay,other_key,unsigned
"""
import datetime
import json
import sys

import requests
from requests_http_signature import HTTPSignatureAuth, algorithms

url, cert, key, ca, alg, sign_key, keyid, other_key, other_keyid = sys.argv[1:10]
cases = sys.argv[10].split(",") if len(sys.argv) > 10 else [
    "ok", "tampered", "stale", "replay", "other_key", "unsigned"]
ALGS = {
    "ecdsa-p256-sha256": algorithms.ECDSA_P256_SHA256,
    "ed25519": algorithms.ED25519,
    "rsa-pss-sha512": algorithms.RSA_PSS_SHA512,
}
COVERED = ("@method", "@authority", "@path", "@query", "content-digest")


def auth(key_file, kid, age=None):
    class Auth(HTTPSignatureAuth):
        def get_created(self, request):
            created = super().get_created(request)
            return created - age if age else created

    with open(key_file, "rb") as f:
        pem = f.read()
    return Auth(signature_algorithm=ALGS[alg], key=pem, key_id=kid,
                covered_component_ids=COVERED, use_nonce=True)


session = requests.Session()


def body(n):
    return json.dumps({"amount": f"{n}.00", "currency": "EUR", "to": "DE89370400440532013000"})


def prepared(signer, n=10):
    req = requests.Request("POST", url, data=body(n),
                           headers={"Content-Type": "application/json"}).prepare()
    return signer(req)


def send(case, req):
    r = session.send(req, cert=(cert, key), verify=ca, timeout=20)
    print(json.dumps({"case": case, "status": r.status_code, "body": r.text}), flush=True)


for case in cases:
    if case == "ok":
        send(case, prepared(auth(sign_key, keyid)))
    elif case == "tampered":
        req = prepared(auth(sign_key, keyid))
        req.body = body(99).encode()
        send(case, req)
    elif case == "stale":
        send(case, prepared(auth(sign_key, keyid, age=datetime.timedelta(minutes=10))))
    elif case == "replay":
        req = prepared(auth(sign_key, keyid))
        send("replay_first", req.copy())
        send(case, req)
    elif case == "other_key":
        send(case, prepared(auth(other_key, other_keyid)))
    elif case == "unsigned":
        send(case, requests.Request("POST", url, data=body(10),
                                    headers={"Content-Type": "application/json"}).prepare())
