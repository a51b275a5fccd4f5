"""Gate and provenance: the signed evidence a model leaves with, and the bundle that carries it.

The gate (`audits.gate`) decides; this package signs what it decided, says who approved it and
under which release policy, and writes the export bundle that ``secure-ft verify`` and the server
check before they trust a byte.

``keys``                   ECDSA P-256 signing keys: where they live, which public keys are trusted
``attestation``            in-toto statements about a model folder in signed DSSE envelopes
``verdict_attestation``    the signed verdict, bound to everything it was decided from
``verdict_explanations``   one sentence per check: what it means and what to do next
``approvals``              signed human approvals of one verdict of one model
``human_oversight``        the approvals as listed in the report, and its technical documentation section
``release_policy``         the organisation's release policy, signed by its root key
``release_check``          whether a checked verdict may be released under that policy
``provenance``             what a model was built from, as SLSA-style resource descriptors
``openssf_signing``        OpenSSF model signing, so anyone can check a model without us
``export``                 the signed bundle: a model leaves the platform only with its evidence
``model_card``             the bundle's model card, written from the audit report
``bundle_usage``           how to load and check a bundle, written from what the loader reads

May import the layers below it (records, text and models, training and privacy, federated
learning, audits); it uses `secure_ft.records`, `secure_ft.text` and the gate's types from
`audits`. Never serving, the pipeline or the commands (``tests/test_architecture.py``). Exports
nothing itself: ``from secure_ft.release.export import export_bundle, verify_bundle``.
"""
