"""
C{python -m aigateway.auth.token}: make keys and tokens for your own issuer.

  - C{keygen --type rsa|ec --out PREFIX}: writes C{PREFIX.key} (the private
    key, PKCS#8 PEM, mode 0600) and C{PREFIX.pub} (the public key, PEM);
  - C{jwk PEM_FILE}: prints the public JWK of a PEM key (public, private or
    certificate) with its RFC 7638 thumbprint as C{kid}, the same C{kid}
    the gateway gives that PEM key;
  - C{mint --key PRIVATE_PEM --iss ISS [--sub S] [--aud A]... [--exp-in 1h
    | --no-exp] [--claim name=JSON]... [--kid KID | --thumbprint-kid]
    [--alg ALG]}: prints a signed token; C{alg} follows from the key (RS256
    for RSA, ES256/384/512 by curve) unless C{--alg} says otherwise.

Errors are one line on standard error, and the exit status is 2.
"""

from __future__ import annotations

import argparse
import hashlib
import hmac
import json
import os
import sys
import time
from typing import IO, Any, NoReturn, Sequence

from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature

from aigateway.config import ConfigError, parseDuration
from aigateway.auth.keys import KeyLoadError, b64urlEncode, publicKeyFromPEM, thumbprint

__all__ = ["defaultAlg", "main", "publicJWK", "sign"]

_HASHES: dict[str, hashes.HashAlgorithm] = {
    "256": hashes.SHA256(), "384": hashes.SHA384(), "512": hashes.SHA512()}
_EC = {"secp256r1": ("ES256", 32, "P-256"), "secp384r1": ("ES384", 48, "P-384"),
       "secp521r1": ("ES512", 66, "P-521")}
_CURVES: dict[str, ec.EllipticCurve] = {
    "P-256": ec.SECP256R1(), "P-384": ec.SECP384R1(), "P-521": ec.SECP521R1()}


def _segment(document: object) -> str:
    return b64urlEncode(json.dumps(document, separators=(",", ":")).encode("utf-8"))


def defaultAlg(key: Any) -> str:
    """
    The signature algorithm that fits a private key (or C{bytes} secret).
    """
    if isinstance(key, rsa.RSAPrivateKey):
        return "RS256"
    if isinstance(key, ec.EllipticCurvePrivateKey) and key.curve.name in _EC:
        return _EC[key.curve.name][0]
    if isinstance(key, bytes):
        return "HS256"
    raise ValueError("the key is neither an RSA key, an EC key on P-256/384/521, nor a secret")


def _checkAlg(alg: str, key: Any) -> None:
    if isinstance(key, rsa.RSAPrivateKey) and alg in ("RS256", "RS384", "RS512"):
        return
    if isinstance(key, ec.EllipticCurvePrivateKey) and alg == defaultAlg(key):
        return
    if isinstance(key, bytes) and alg in ("HS256", "HS384", "HS512"):
        return
    raise ValueError(f"{alg} cannot be signed with this key (it fits {defaultAlg(key)})")


def sign(
    claims: dict,
    key: Any,
    alg: str | None = None,
    kid: str | None = None,
    header: dict | None = None,
) -> str:
    """
    Sign C{claims} as a compact JWS.

    @param key: an RSA or EC private key (C{cryptography}), or C{bytes} for
        HMAC.
    @param alg: the algorithm, L{defaultAlg} of the key when not given.
    @param header: extra header members (they may override C{alg}, which is
        how tests forge tokens).
    @raise ValueError: when C{alg} does not fit the key.
    """
    alg = alg or defaultAlg(key)
    _checkAlg(alg, key)
    head: dict[str, Any] = {"alg": alg, "typ": "JWT"}
    if kid is not None:
        head["kid"] = kid
    head.update(header or {})
    signingInput = (_segment(head) + "." + _segment(claims)).encode("ascii")
    digest = _HASHES[alg[2:]]
    if alg.startswith("HS"):
        signature = hmac.new(key, signingInput, getattr(hashlib, digest.name)).digest()
    elif alg.startswith("RS"):
        signature = key.sign(signingInput, padding.PKCS1v15(), digest)
    else:
        r, s = decode_dss_signature(key.sign(signingInput, ec.ECDSA(digest)))
        size = _EC[key.curve.name][1]
        signature = r.to_bytes(size, "big") + s.to_bytes(size, "big")
    return signingInput.decode("ascii") + "." + b64urlEncode(signature)


def _intBytes(value: int) -> bytes:
    return value.to_bytes(max(1, (value.bit_length() + 7) // 8), "big")


def publicJWK(pem: str) -> dict:
    """
    The public JWK of a PEM key (public, private or certificate), with its
    RFC 7638 thumbprint as C{kid}: the C{kid} the gateway gives that key.

    @raise KeyLoadError: when the PEM holds no RSA or EC key.
    """
    public = publicKeyFromPEM(pem)
    jwk: dict[str, Any]
    if isinstance(public, rsa.RSAPublicKey):
        numbers = public.public_numbers()
        jwk = {"kty": "RSA", "n": b64urlEncode(_intBytes(numbers.n)),
               "e": b64urlEncode(_intBytes(numbers.e))}
    elif isinstance(public, ec.EllipticCurvePublicKey) and public.curve.name in _EC:
        point = public.public_numbers()
        size = _EC[public.curve.name][1]
        jwk = {"kty": "EC", "crv": _EC[public.curve.name][2],
               "x": b64urlEncode(point.x.to_bytes(size, "big")),
               "y": b64urlEncode(point.y.to_bytes(size, "big"))}
    else:
        raise KeyLoadError("the PEM holds neither an RSA key nor an EC key on P-256/384/521")
    jwk.update(use="sig", kid=thumbprint(jwk))
    return jwk


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
        # Not JSON: take it as a string, so --claim team=dev works.
        return name, value


def _write(path: str, data: bytes, mode: int) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    with os.fdopen(fd, "wb") as f:
        f.write(data)


def _keygen(args: argparse.Namespace, out: IO[str]) -> None:
    private: Any
    if args.type == "rsa":
        private = rsa.generate_private_key(public_exponent=65537, key_size=args.bits)
    else:
        private = ec.generate_private_key(_CURVES[args.curve])
    for path in (args.out + ".key", args.out + ".pub"):
        if os.path.exists(path):
            raise ValueError(f"{path} exists; not overwriting it")
    _write(args.out + ".key", private.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    ), 0o600)
    _write(args.out + ".pub", private.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    ), 0o644)
    out.write(f"wrote {args.out}.key and {args.out}.pub\n")


def _mint(args: argparse.Namespace, now: float) -> str:
    pem = _read(args.key)
    try:
        key = serialization.load_pem_private_key(pem.encode("ascii"), password=None)
    except TypeError:
        raise ValueError(f"{args.key}: encrypted private keys are not supported") from None
    except ValueError:
        raise ValueError(f"{args.key} is not an unencrypted PEM private key") from None
    claims: dict[str, Any] = {"iss": args.iss}
    if args.sub is not None:
        claims["sub"] = args.sub
    if args.aud:
        claims["aud"] = args.aud[0] if len(args.aud) == 1 else args.aud
    claims["iat"] = int(now)
    if not args.no_exp:
        claims["exp"] = int(now + parseDuration(args.exp_in or "1h", "--exp-in"))
    for text in args.claim:
        name, value = _claim(text)
        claims[name] = value
    kid = publicJWK(pem)["kid"] if args.thumbprint_kid else args.kid
    return sign(claims, key, args.alg, kid)


class _Parser(argparse.ArgumentParser):
    """
    Usage errors as one line on standard error, exit status 2.
    """

    stderr: IO[str] = sys.stderr

    def error(self, message: str) -> NoReturn:
        self.stderr.write(f"{self.prog}: {message}\n")
        raise SystemExit(2)


def main(
    argv: Sequence[str] | None = None,
    now: float | None = None,
    stdout: IO[str] | None = None,
    stderr: IO[str] | None = None,
) -> int:
    """
    Run the command.

    @param now: the time tokens are minted at (the clock, by default).
    @return: the exit status: 0, or 2 after one line on C{stderr}.
    """
    out = stdout or sys.stdout
    err = stderr or sys.stderr

    class Parser(_Parser):
        pass

    Parser.stderr = err
    parser = Parser(prog="python -m aigateway.auth.token", description="Make keys and tokens.")
    commands = parser.add_subparsers(dest="command", required=True)
    keygen = commands.add_parser("keygen", help="make a key pair")
    keygen.add_argument("--type", choices=["rsa", "ec"], default="rsa")
    keygen.add_argument("--bits", type=int, default=2048, choices=[2048, 3072, 4096])
    keygen.add_argument("--curve", choices=sorted(_CURVES), default="P-256")
    keygen.add_argument("--out", required=True, help="file name prefix")
    jwk = commands.add_parser("jwk", help="print a PEM key's public JWK")
    jwk.add_argument("pem")
    mint = commands.add_parser("mint", help="sign a token")
    mint.add_argument("--key", required=True, help="private key PEM file")
    mint.add_argument("--iss", required=True)
    mint.add_argument("--sub")
    mint.add_argument("--aud", action="append", default=[])
    lifetime = mint.add_mutually_exclusive_group()
    lifetime.add_argument("--exp-in", help="a duration such as 30s, 5m, 1h (the default)")
    lifetime.add_argument("--no-exp", action="store_true")
    mint.add_argument("--claim", action="append", default=[], help="name=JSON value")
    kid = mint.add_mutually_exclusive_group()
    kid.add_argument("--kid")
    kid.add_argument("--thumbprint-kid", action="store_true")
    mint.add_argument("--alg", choices=["RS256", "RS384", "RS512", "ES256", "ES384", "ES512"])
    try:
        args = parser.parse_args(argv)
    except SystemExit as e:
        return int(e.code or 0)
    try:
        if args.command == "keygen":
            _keygen(args, out)
        elif args.command == "jwk":
            out.write(json.dumps(publicJWK(_read(args.pem)), indent=2) + "\n")
        else:
            out.write(_mint(args, time.time() if now is None else now) + "\n")
    except OSError as e:
        err.write(f"{parser.prog}: {e.filename or ''}: {e.strerror or e}\n")
        return 2
    except (ValueError, ConfigError) as e:
        # KeyLoadError is a ValueError.
        err.write(f"{parser.prog}: {e}\n")
        return 2
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
