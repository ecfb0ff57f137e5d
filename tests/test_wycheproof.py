"""
The Wycheproof JOSE vectors through the verifier.

Every vector labelled C{invalid} must be refused; every one labelled
C{valid} must be accepted, or refused as C{algorithm not supported} (PS256
and friends, counted); C{acceptable} ones may go either way.  Vectors that
are not compact JWS verifications (JSON serialization) are counted as not
applicable.  A handful of vectors are labelled in a way no strict verifier
can follow; each is listed below by id with the outcome we give and why,
and the test fails if that outcome changes.

The vectors' payloads are not JWT claims (C{"foo"}, C{"Test"}), so they go
through the signature layer the L{Verifier} itself uses: L{parseToken},
then L{verifySignature} against the keys L{keysFromText} builds from the
vector's JWK or JWKS.

The files are read from C{../shared/testdata/wycheproof/} beside the
project, or from C{$AIGATEWAY_WYCHEPROOF}.
"""

from __future__ import annotations

import collections
import json
import os

from twisted.trial.unittest import SkipTest, SynchronousTestCase

from aigateway.auth.jwt import JWTError, parseToken, verifySignature
from aigateway.auth.keys import KeyLoadError, keysFromText

VECTORS = os.environ.get("AIGATEWAY_WYCHEPROOF") or os.path.join(
    os.path.dirname(os.path.abspath(__file__)), "..", "..", "shared", "testdata", "wycheproof"
)

# Vectors labelled "valid" that the verifier refuses on purpose: the outcome
# it gives, and why.
REFUSED_ON_PURPOSE = {
    "json_web_signature_test.json": {
        347: ("rejected: key set",
              "the RFC 7520 P-521 key carries the JWK alg 'ES521', which names no algorithm; a key "
              "whose alg is set verifies that alg only, so this one verifies nothing (and "
              "json_web_key_test.json tcId 19 wants an 'ES521' key refused too)"),
        351: ("rejected: key set", "as 347, with key_ops"),
        372: ("rejected: malformed token",
              "'?' inside the header segment is not base64url; only canonical base64url passes "
              "(the vector's label looks swapped with 367's)"),
        373: ("rejected: malformed token",
              "'?' inside the payload segment, as 372 (label swapped with 370's)"),
    },
    "json_web_key_test.json": {},
}


def _load(name: str) -> dict:
    path = os.path.join(VECTORS, name)
    if not os.path.exists(path):
        raise SkipTest(f"Wycheproof vectors not found at {os.path.abspath(VECTORS)}")
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def _outcome(keySet: object, jws: str) -> str:
    """
    What the verifier makes of one vector: C{accepted}, C{unsupported} or
    C{rejected: <why>}.
    """
    try:
        parsed = parseToken(jws)
    except JWTError as e:
        return "unsupported" if e.reason == "algorithm not supported" else f"rejected: {e.reason}"
    try:
        keys = keysFromText(json.dumps(keySet))
    except KeyLoadError:
        return "rejected: key set"
    try:
        verifySignature(parsed, keys)
    except JWTError as e:
        return f"rejected: {e.reason}"
    return "accepted"


class WycheproofTests(SynchronousTestCase):
    """
    The JWS and JWK vector files.
    """

    def check(self, name: str) -> None:
        document = _load(name)
        refusedOnPurpose = REFUSED_ON_PURPOSE[name]
        vectors = []
        for group in document["testGroups"]:
            keySet = group.get("public") or group.get("private")
            for test in group["tests"]:
                vectors.append((keySet, test))
        self.assertEqual(len(vectors), document["numberOfTests"])
        # The same token and key labelled both valid and invalid.
        labels: dict[tuple[str, str], set[str]] = collections.defaultdict(set)
        for keySet, test in vectors:
            labels[json.dumps(test["jws"]), json.dumps(keySet, sort_keys=True)].add(test["result"])

        counts: collections.Counter[str] = collections.Counter()
        byLabel: collections.Counter[tuple[str, str]] = collections.Counter()
        wrong: list[tuple[object, ...]] = []
        notes = []
        for keySet, test in vectors:
            tcId, jws, label = test["tcId"], test["jws"], test["result"]
            if not isinstance(jws, str) or jws.lstrip().startswith("{"):
                counts["not applicable"] += 1
                notes.append(f"  tcId {tcId} ({test['comment']}): not a compact JWS, not applicable")
                continue
            outcome = _outcome(keySet, jws)
            kind = outcome.split(":")[0]
            counts[kind] += 1
            both = labels[json.dumps(jws), json.dumps(keySet, sort_keys=True)] >= {"valid", "invalid"}
            if tcId in refusedOnPurpose:
                expected, why = refusedOnPurpose[tcId]
                counts["labelled valid, refused on purpose"] += 1
                notes.append(f"  tcId {tcId} ({test['comment']}): {outcome}: {why}")
                if label != "valid" or outcome != expected:
                    wrong.append((tcId, test["comment"], label, outcome, f"pinned: {expected}"))
            elif both:
                # 357 (valid) and 367, 370 (invalid) are the very same
                # token: we accept it, as the valid label says.
                counts["labelled both valid and invalid"] += 1
                notes.append(f"  tcId {tcId} ({test['comment']}): labelled {label}, but the same token "
                             f"and key are also labelled the other way; {outcome}")
                if outcome != "accepted":
                    wrong.append((tcId, test["comment"], label, outcome))
            else:
                byLabel[label, kind] += 1
                if label == "invalid" and outcome == "accepted":
                    wrong.append((tcId, test["comment"], label, outcome))
                elif label == "valid" and kind == "rejected":
                    wrong.append((tcId, test["comment"], label, outcome))
        summary = ", ".join(f"{counts[k]} {k}" for k in
                            ("accepted", "rejected", "unsupported", "not applicable",
                             "labelled valid, refused on purpose", "labelled both valid and invalid"))
        print(f"\n{name}: {len(vectors)} vectors: {summary}")
        print("  by label, the vectors listed below aside: " + ", ".join(f"{label} -> {kind}: {n}" for (label, kind), n in sorted(byLabel.items())))
        for note in notes:
            print(note)
        self.assertEqual(wrong, [])
        self.assertEqual(
            counts["labelled valid, refused on purpose"], len(refusedOnPurpose),
            "a pinned vector is missing from the file",
        )

    def test_signatures(self) -> None:
        """
        The JWS vectors: HS256, ES256, RS256/384/512, PS256/384/512, the
        RFC 7520 examples, key use, base64 edge cases and ES256 special
        signatures.
        """
        self.check("json_web_signature_test.json")

    def test_keys(self) -> None:
        """
        The JWK and JWKS vectors: mixed and duplicate-kid sets, weak RSA
        keys, short HMAC keys, alg and curve mismatches, wrong kty and use.
        """
        self.check("json_web_key_test.json")
