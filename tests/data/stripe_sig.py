"""The official Stripe SDK as the independent side of the signature tests.

    stripe_sig.py sign SECRET TIMESTAMP < BODY      -> prints a Stripe-Signature header
    stripe_sig.py verify SECRET HEADER < BODY       -> exit 0 if the SDK accepts the header

`sign` uses the SDK's own signature function over `TIMESTAMP.BODY`; `verify`
is the SDK's public `WebhookSignature.verify_header` (300 s tolerance).
"""
import sys

import stripe


def main() -> int:
    mode, secret, arg = sys.argv[1], sys.argv[2], sys.argv[3]
    body = sys.stdin.buffer.read().decode("utf-8")
    if mode == "sign":
        signature = stripe.WebhookSignature._compute_signature(f"{arg}.{body}", secret)
        print(f"t={arg},{stripe.WebhookSignature.EXPECTED_SCHEME}={signature}")
        return 0
    if mode == "verify":
        try:
            stripe.WebhookSignature.verify_header(body, arg, secret, tolerance=300)
        except stripe.SignatureVerificationError as e:
            print(f"rejected: {e}", file=sys.stderr)
            return 1
        return 0
    print(f"unknown mode {mode}", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
