#!/usr/bin/env python3
"""Mints N session tokens for made-up buyers, signed with the session key given in hex (the
server under test runs with the same STAMPEDE_SESSION_KEY): what a crowd of a million distinct
buyers looks like to a node that has never seen any of them. One token per line on stdout.

    bench/mint_tokens.py KEY_HEX N [SEED]
"""
import base64, hashlib, hmac, random, sys, time

CROCKFORD = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"

def ulid(rng, ms):
    n = (ms << 80) | rng.getrandbits(80)
    return "".join(CROCKFORD[(n >> (5 * i)) & 31] for i in reversed(range(26)))

def main():
    key = bytes.fromhex(sys.argv[1])
    n = int(sys.argv[2])
    rng = random.Random(int(sys.argv[3]) if len(sys.argv) > 3 else 7)
    now = int(time.time() * 1000)
    expires = now + 7 * 24 * 3600 * 1000
    out = sys.stdout
    for _ in range(n):
        body = f"s1.{ulid(rng, now)}.buyer.{rng.getrandbits(128):032x}.{expires}"
        mac = hmac.new(key, body.encode(), hashlib.sha256).digest()
        out.write(body + "." + base64.urlsafe_b64encode(mac).rstrip(b"=").decode() + "\n")

if __name__ == "__main__":
    main()
