"""
C{python -m aigateway.token}: make keys and tokens for your own issuer.

  - C{keygen --type rsa|ec --out PREFIX}: writes C{PREFIX.key} (private) and
    C{PREFIX.pub} (public), PEM;
  - C{jwk PEM_FILE}: prints the public JWK with its RFC 7638 thumbprint as
    C{kid}, the same C{kid} the gateway gives a PEM key;
  - C{mint --key PRIVATE_PEM --iss ISS [--sub S] [--aud A]... [--exp-in 1h |
    --no-exp] [--claim name=JSON]... [--kid KID | --thumbprint-kid]
    [--alg ALG]}: prints a signed token.
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import hmac
import json
import sys
import time
from typing import Any, Sequence

from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature

from aigateway.config import ConfigError, parseDuration
from aigateway.keys import KeyLoadError, keysFromText, publicKeyFromPEM, thumbprint

__all__ = ["main", "publicJWK", "sign"]

_HASHES = {"256": hashes.SHA256, "384": hashes.SHA384, "512": hashes.SHA512}
_EC_ALGS = {"secp256r1": ("ES256", 32), "secp384r1": ("ES384", 48), "secp521r1": ("ES512", 66)}


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _segment(document: object) -> str:
    return _b64(json.dumps(document, separators=(",", ":")).encode("utf-8"))


def defaultAlg(key: Any) -> str:
    """
    The signature algorithm that fits a private key (or secret).
    """
    if isinstance(key, rsa.RSAPrivateKey):
        return "RS256"
    if isinstance(key, ec.EllipticCurvePrivateKey):
        return _EC_ALGS[key.curve.name][0]
    return "HS256"


def sign(
    claims: dict, key: Any, alg: str | None = None, kid: str | None = None,
    header: dict | None = None,
) -> str:
    """
    Sign C{claims} as a compact JWS.

    @param key: an RSA or EC private key, or C{bytes} for HMAC.
    @param header: extra header members.
    """
    alg = alg or defaultAlg(key)
    head: dict[str, Any] = {"alg": alg, "typ": "JWT"}
    if kid is not None:
        head["kid"] = kid
    head.update(header or {})
    signingInput = (_segment(head) + "." + _segment(claims)).encode("ascii")
    digest = _HASHES[alg[2:]]()
    if alg.startswith("HS"):
        signature = hmac.new(key, signingInput, getattr(hashlib, digest.name)).digest()
    elif alg.startswith("RS"):
        signature = key.sign(signingInput, padding.PKCS1v15(), digest)
    elif alg.startswith("ES"):
        r, s = decode_dss_signature(key.sign(signingInput, ec.ECDSA(digest)))
        size = _EC_ALGS[key.curve.name][1]
        signature = r.to_bytes(size, "big") + s.to_bytes(size, "big")
    else:
        raise ValueError(f"cannot sign with {alg}")
    return signingInput.decode("ascii") + "." + _b64(signature)


def publicJWK(pem: str) -> dict:
    """
    The public JWK of a PEM key (public, private or certificate), with its
    RFC 7638 thumbprint as C{kid}: the C{kid} the gateway gives that key.
    """
    public = publicKeyFromPEM(pem)
    jwk: dict[str, Any]
    if isinstance(public, rsa.RSAPublicKey):
        numbers = public.public_numbers()
        jwk = {"kty": "RSA", "n": _b64(_int(numbers.n)), "e": _b64(_int(numbers.e))}
    elif isinstance(public, ec.EllipticCurvePublicKey):
        point = public.public_numbers()
        size = (public.curve.key_size + 7) // 8
        crv = {"secp256r1": "P-256", "secp384r1": "P-384", "secp521r1": "P-521"}[public.curve.name]
        jwk = {"kty": "EC", "crv": crv, "x": _b64(point.x.to_bytes(size, "big")),
               "y": _b64(point.y.to_bytes(size, "big"))}
    else:
        raise ValueError("the PEM holds neither an RSA nor an EC key")
    jwk.update(use="sig", kid=thumbprint(jwk))
    return jwk


def _int(value: int) -> bytes:
    return value.to_bytes(max(1, (value.bit_length() + 7) // 8), "big")


def _read(path: str) -> str:
    with open(path, encoding="ascii") as f:
        return f.read()


def _claim(text: str) -> tuple[str, Any]:
    name, sep, value = text.partition("=")
    if not sep or not name:
        raise ValueError(f"--claim {text!r} must be name=value")
    try:
        return name, json.loads(value)
    except ValueError:
        return name, value


def _keygen(kind: str, prefix: str) -> None:
    private: Any
    if kind == "rsa":
        private = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    else:
        private = ec.generate_private_key(ec.SECP256R1())
    with open(prefix + ".key", "wb") as f:
        f.write(private.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        ))
    with open(prefix + ".pub", "wb") as f:
        f.write(private.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        ))
    print(f"wrote {prefix}.key and {prefix}.pub")


def _mint(args: argparse.Namespace, now: float) -> str:
    pem = _read(args.key)
    key = serialization.load_pem_private_key(pem.encode("ascii"), password=None)
    claims: dict[str, Any] = {"iss": args.iss}
    if args.sub:
        claims["sub"] = args.sub
    if args.aud:
        claims["aud"] = args.aud[0] if len(args.aud) == 1 else args.aud
    claims["iat"] = int(now)
    if not args.no_exp:
        claims["exp"] = int(now + parseDuration(args.exp_in, "--exp-in"))
    for text in args.claim:
        name, value = _claim(text)
        claims[name] = value
    kid = args.kid
    if args.thumbprint_kid:
        kid = keysFromText(pem)[0].thumbprint
    return sign(claims, key, args.alg, kid)


def main(argv: Sequence[str] | None = None, now: float | None = None) -> int:
    """
    Run the command; errors are one line on standard error, status 2.
    """
    parser = argparse.ArgumentParser(prog="python -m aigateway.token", description=__doc__.split("\n")[1])
    commands = parser.add_subparsers(dest="command", required=True)
    keygen = commands.add_parser("keygen", help="make a key pair")
    keygen.add_argument("--type", choices=["rsa", "ec"], default="rsa")
    keygen.add_argument("--out", required=True, help="file name prefix")
    jwk = commands.add_parser("jwk", help="print a PEM key's public JWK")
    jwk.add_argument("pem")
    mint = commands.add_parser("mint", help="sign a token")
    mint.add_argument("--key", required=True, help="private key PEM file")
    mint.add_argument("--iss", required=True)
    mint.add_argument("--sub")
    mint.add_argument("--aud", action="append", default=[])
    mint.add_argument("--exp-in", default="1h")
    mint.add_argument("--no-exp", action="store_true")
    mint.add_argument("--claim", action="append", default=[], help="name=JSON value")
    mint.add_argument("--kid")
    mint.add_argument("--thumbprint-kid", action="store_true")
    mint.add_argument("--alg")
    args = parser.parse_args(argv)
    try:
        if args.command == "keygen":
            _keygen(args.type, args.out)
        elif args.command == "jwk":
            print(json.dumps(publicJWK(_read(args.pem)), indent=2))
        else:
            print(_mint(args, time.time() if now is None else now))
    except (OSError, ValueError, KeyLoadError, ConfigError, TypeError) as e:
        sys.stderr.write(f"aigateway.token: {e}\n")
        return 2
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
