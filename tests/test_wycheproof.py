"""
The Wycheproof JOSE vectors through the verifier: every invalid vector is
rejected; every valid one is accepted, or refused as an algorithm the
gateway does not support.
"""

from __future__ import annotations

import json
import os

from twisted.trial.unittest import SkipTest, SynchronousTestCase

from aigateway.jwt import JWTError, parseToken, verifySignature
from aigateway.keys import KeyLoadError, keysFromText

HERE = os.path.dirname(os.path.abspath(__file__))
VECTORS = os.environ.get(
    "AIGATEWAY_WYCHEPROOF",
    os.path.join(HERE, "..", "..", "shared", "testdata", "wycheproof"),
)


def _load(name: str) -> dict:
    path = os.path.join(VECTORS, name)
    if not os.path.exists(path):
        raise SkipTest(f"Wycheproof vectors not found at {os.path.abspath(VECTORS)}")
    with open(path) as f:
        return json.load(f)


# Vectors the file calls valid that this verifier refuses on purpose, and why.
STRICTER = {
    347: "the key's JWK alg is ES521, not the token's ES512: such keys are skipped",
    351: "the key's JWK alg is ES521, not the token's ES512: such keys are skipped",
    372: "a character outside base64url in the header: only canonical base64url passes",
    373: "a character outside base64url in the payload: only canonical base64url passes",
}


def _outcome(group: dict, jws: str) -> str:
    """
    What the verifier makes of one vector: C{accepted}, C{unsupported} or
    C{rejected: <reason>}.
    """
    keySet = group.get("public") or group.get("private")
    try:
        keys = keysFromText(json.dumps(keySet))
    except KeyLoadError as e:
        return f"rejected: key set: {e}"
    try:
        verifySignature(parseToken(jws), keys)
    except JWTError as e:
        if e.reason == "algorithm not supported":
            return "unsupported"
        return f"rejected: {e.reason}"
    return "accepted"


class WycheproofTests(SynchronousTestCase):
    """
    The JWS and JWK vector files.
    """

    def check(self, name: str, stricter: dict[int, str]) -> None:
        counts = {"accepted": 0, "rejected": 0, "unsupported": 0, "not applicable": 0,
                  "contradictory": 0, "stricter": 0}
        vectors = []
        for group in _load(name)["testGroups"]:
            for test in group["tests"]:
                keySet = json.dumps(group.get("public") or group.get("private"), sort_keys=True)
                vectors.append((group, test, (test.get("jws"), keySet)))
        results: dict[tuple, set[str]] = {}
        for _, test, identity in vectors:
            results.setdefault(identity, set()).add(test["result"])
        wrong = []
        for group, test, identity in vectors:
            jws = test.get("jws")
            if not isinstance(jws, str) or jws.startswith("{"):
                counts["not applicable"] += 1
                continue
            outcome = _outcome(group, jws)
            if {"valid", "invalid"} <= results[identity]:
                # The same token and keys are in the file as both valid and
                # invalid: no verifier can satisfy both.
                counts["contradictory"] += 1
                continue
            if test["tcId"] in stricter:
                counts["stricter"] += 1
                if not outcome.startswith("rejected"):
                    wrong.append((test["tcId"], test["comment"], "refused on purpose", outcome))
                continue
            counts[outcome.split(":")[0]] += 1
            expected = test["result"]
            # An algorithm the gateway does not support is refused too.
            if expected == "invalid" and outcome == "accepted":
                wrong.append((test["tcId"], test["comment"], expected, outcome))
            if expected == "valid" and outcome.startswith("rejected"):
                wrong.append((test["tcId"], test["comment"], expected, outcome))
        print(f"\n{name}: " + ", ".join(f"{n} {k}" for k, n in counts.items()))
        self.assertEqual(wrong, [])

    def test_signatures(self) -> None:
        """
        The JWS vectors.
        """
        self.check("json_web_signature_test.json", STRICTER)

    def test_keys(self) -> None:
        """
        The JWK and JWKS vectors.
        """
        self.check("json_web_key_test.json", {})
