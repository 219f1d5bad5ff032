#!/usr/bin/env python3
"""Verifies a Stampede admission token the way a shop's backend would: with PyJWT and the
public keys published at /.well-known/jwks.json, without asking Stampede anything else.

    verify-admission-token.py --jwks-url URL --token JWT --user USER_ID --sale SALE_ID --device DEVICE

Exit 0 and print the claims if the token is valid for that user, sale and device; exit 1 with
the reason if not (bad signature, expired, wrong issuer/audience, another user, sale or device).
Needs PyJWT with the `crypto` extra (Ed25519): pip install 'PyJWT[crypto]'.
"""
import argparse
import json
import sys

import jwt

ISSUER = "stampede"
AUDIENCE = "stampede-admission"


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--jwks-url", required=True)
    p.add_argument("--token", required=True)
    p.add_argument("--user", required=True)
    p.add_argument("--sale", required=True)
    p.add_argument("--device", required=True)
    a = p.parse_args()
    try:
        # Finds the key by the token's `kid` in the published set.
        key = jwt.PyJWKClient(a.jwks_url).get_signing_key_from_jwt(a.token)
        claims = jwt.decode(
            a.token,
            key.key,
            algorithms=["EdDSA"],
            issuer=ISSUER,
            audience=AUDIENCE,
            options={"require": ["exp", "iat", "iss", "aud", "sub"]},
        )
    except jwt.PyJWTError as e:
        print(f"refused: {type(e).__name__}: {e}")
        return 1
    # The holder binding: a token is worth something only to its own user, sale and device.
    for claim, expected in (("sub", a.user), ("sale", a.sale), ("device", a.device)):
        if claims.get(claim) != expected:
            print(f"refused: {claim} is {claims.get(claim)!r}, not {expected!r}")
            return 1
    print(json.dumps(claims, sort_keys=True))
    return 0


if __name__ == "__main__":
    sys.exit(main())
