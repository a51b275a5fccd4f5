"""CLI: ``release-policy init|sign|show`` and ``approve`` — the organisation's say in which verdicts count.

Exit codes: 0 ok; 2 bad input (a missing comment, an unacknowledged review item, a gate key used
to approve); 4 a release policy or verdict that does not verify.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import yaml

from secure_ft.errors import ConfigError


def add_release_policy_arguments(parser: argparse.ArgumentParser) -> None:
    """``--release-policy`` and ``--org-root-pub``, shared by export, verify, serve and approve."""
    parser.add_argument("--release-policy", metavar="FILE",
                        help="the organisation's signed release policy (release-policy.dsse.json) to enforce "
                             "(default: $SECURE_FT_RELEASE_POLICY, else release/release-policy.dsse.json in the "
                             "secure-ft config folder; none: no release policy applied)")
    parser.add_argument("--org-root-pub", metavar="KEY.pub",
                        help="the organisation root public key the release policy must be signed with (default: "
                             "$SECURE_FT_ORG_ROOT_PUB, else release/org-root.pub in the config folder)")


def _accepted_policy(value: str) -> dict:
    """A shipped policy's name, or a policy file: ``{name, sha256}`` of its exact bytes."""
    from secure_ft.records.policy import default_policy_path, load_policy

    shipped = default_policy_path().parent / f"{value}.yaml"
    path = shipped if shipped.is_file() and not Path(value).is_file() else Path(value)
    policy, digest = load_policy(path)
    return {"name": policy.name, "sha256": digest}


def cmd_release_policy_init(args: argparse.Namespace) -> int:
    from secure_ft.records.atomic_files import atomic_write_text
    from secure_ft.release.keys import load_public_key, public_key_fingerprint, public_key_pem
    from secure_ft.release.release_policy import parse_release_policy

    target = Path(args.out)
    if target.exists() and not args.force:
        raise ConfigError(f"{target}: already exists; pass --force to overwrite it")
    gate_keys = [{"fingerprint": public_key_fingerprint(load_public_key(path)), "name": Path(path).stem}
                 for path in args.gate_key]
    approvers = [{"name": Path(path).stem, "public_key": public_key_pem(load_public_key(path)).decode("ascii")}
                 for path in args.approver]
    document = {
        "version": 1,
        "name": args.name,
        "trusted_gate_keys": gate_keys,
        "accepted_audit_policies": [_accepted_policy(value) for value in args.accept_policy],
        "approvals": {"required": args.required, "when": args.when, "approvers": approvers},
        "max_verdict_age_days": args.max_verdict_age_days,
        "revoked_keys": [],
    }
    header = ("# secure-ft release policy: which verdicts may let a model out (see the README, 'Release policy').\n"
              "# Edit, then sign it: secure-ft release-policy sign THIS.yaml --key ORG_ROOT.key --out "
              "release-policy.dsse.json\n"
              "# revoked_keys entries: {fingerprint: HEX, revoked_at: 2026-11-02T00:00:00Z, reason: compromised|retired}\n")
    text = header + yaml.safe_dump(document, sort_keys=False, allow_unicode=True)
    parse_release_policy(text, str(target))  # what init writes must sign
    atomic_write_text(target, text)
    print(f"wrote {target}: {len(gate_keys)} gate key(s), {len(approvers)} approver(s), "
          f"{len(document['accepted_audit_policies'])} accepted audit policy(ies)")
    print(f"sign it with: secure-ft release-policy sign {target} --key ORG_ROOT.key --out release-policy.dsse.json")
    return 0


def cmd_release_policy_sign(args: argparse.Namespace) -> int:
    from secure_ft.release.attestation import write_envelope
    from secure_ft.release.keys import load_private_key, public_key_fingerprint
    from secure_ft.release.release_policy import envelope_digest, sign_release_policy

    key = load_private_key(args.key)
    envelope = sign_release_policy(args.policy, key)
    out = Path(args.out)
    if out.exists() and not args.force:
        raise ConfigError(f"{out}: already exists; pass --force to replace it")
    out.parent.mkdir(parents=True, exist_ok=True)
    write_envelope(out, envelope)
    print(f"signed release policy: {out} (sha256 {envelope_digest(envelope)})")
    print(f"  root key SHA-256 {public_key_fingerprint(key.public_key())}; verifiers need its public half "
          "(--org-root-pub, $SECURE_FT_ORG_ROOT_PUB or release/org-root.pub in the config folder)")
    return 0


def cmd_release_policy_show(args: argparse.Namespace) -> int:
    from secure_ft.release.release_policy import resolve_release_policy

    release = resolve_release_policy(args.release_policy, args.org_root_pub)
    if release is None:
        print("no release policy configured: export, verify and serve apply no release policy "
              "(see `secure-ft release-policy init`)")
        return 0
    policy = release.policy
    print(f"{release.describe()}")
    print(f"  file: {release.path}; root key SHA-256 {release.root_sha256}")
    print("  trusted gate keys: " + ", ".join(f"{e.name or '-'} {e.fingerprint[:16]}…" for e in policy.trusted_gate_keys))
    print("  accepted audit policies: "
          + ", ".join(f"{e.name!r} sha256 {e.sha256[:16]}…" for e in policy.accepted_audit_policies))
    rule = policy.approvals
    print(f"  approvals: {rule.required} of {len(rule.approvers)} (when: {rule.when}): "
          + ", ".join(f"{a.name} {a.fingerprint[:16]}…" for a in rule.approvers))
    print(f"  max verdict age: {policy.max_verdict_age_days:g} days" if policy.max_verdict_age_days
          else "  max verdict age: none (verdicts never expire)")
    for entry in policy.revoked_keys:
        print(f"  revoked: {entry.fingerprint[:16]}… at {entry.revoked_at.isoformat()} ({entry.reason})")
    if args.yaml:
        print(release.yaml_text, end="")
    return 0


def cmd_approve(args: argparse.Namespace) -> int:
    from secure_ft.release.approvals import approve_run
    from secure_ft.release.export import trusted_keys_for
    from secure_ft.release.release_policy import resolve_release_policy

    release = resolve_release_policy(args.release_policy, args.org_root_pub)
    path, statement = approve_run(Path(args.run_dir), args.key, reject=args.reject, comment=args.comment,
                                  acknowledge=args.acknowledge or [], trusted_keys=trusted_keys_for(args.public_key),
                                  release=release)
    predicate = statement["predicate"]
    verdict = predicate["verdict"]
    print(f"{'REJECTED' if args.reject else 'approved'}: {path}")
    print(f"  verdict {verdict['outcome']} under policy {verdict['policy_name']!r} "
          f"(sha256 {verdict['policy_sha256'][:16]}…), model {statement['subject'][0]['digest']['sha256'][:16]}…")
    print(f"  approver key {predicate['approver']['public_key_sha256'][:16]}…, at {predicate['time']}")
    for item in predicate["acknowledged"]:
        print(f"  acknowledged: {item}")
    if release is None:
        print("  note: no release policy configured here; export counts approvals only under one", file=sys.stderr)
    return 0


def register(subparsers) -> None:
    """Add ``release-policy`` and ``approve`` to the ``secure-ft`` command."""
    release = subparsers.add_parser("release-policy", help="the organisation's signed release policy: which "
                                                           "verdicts, gate keys and approvals let a model out")
    actions = release.add_subparsers(dest="release_command", metavar="ACTION", required=True)
    init = actions.add_parser("init", help="write a release policy YAML from public keys and accepted audit policies")
    init.add_argument("--out", default="release-policy.yaml", help="YAML to write (default: release-policy.yaml)")
    init.add_argument("--name", required=True, help="the release policy's name")
    init.add_argument("--gate-key", action="append", required=True, metavar="GATE.pub",
                      help="a gate public key whose verdicts count (repeat)")
    init.add_argument("--accept-policy", action="append", required=True, metavar="NAME|FILE",
                      help="an audit policy accepted by its exact content: a shipped name (regulated-default, "
                           "strict, research) or a policy file (repeat)")
    init.add_argument("--approver", action="append", required=True, metavar="APPROVER.pub",
                      help="an approver's public key (repeat); named after the file")
    init.add_argument("--required", type=int, default=1, metavar="K", help="approvals required (default: 1)")
    init.add_argument("--when", choices=("needs_review", "always"), default="needs_review",
                      help="when approvals are required (default: needs_review)")
    init.add_argument("--max-verdict-age-days", type=float, default=None, metavar="DAYS",
                      help="refuse verdicts older than this (default: no limit)")
    init.add_argument("--force", action="store_true", help="overwrite an existing file")
    init.set_defaults(handler=cmd_release_policy_init)

    sign = actions.add_parser("sign", help="sign a release policy YAML with the organisation root key (DSSE)")
    sign.add_argument("policy", metavar="POLICY.yaml")
    sign.add_argument("--key", required=True, metavar="ORG_ROOT.key", help="the organisation root private key")
    sign.add_argument("--out", default="release-policy.dsse.json", help="signed file (default: release-policy.dsse.json)")
    sign.add_argument("--force", action="store_true", help="replace an existing signed file")
    sign.set_defaults(handler=cmd_release_policy_sign)

    show = actions.add_parser("show", help="check the configured release policy's signature and print its rules")
    add_release_policy_arguments(show)
    show.add_argument("--yaml", action="store_true", help="also print the signed YAML text")
    show.set_defaults(handler=cmd_release_policy_show)

    approve = subparsers.add_parser("approve", help="sign an approval (or --reject) of a run's verdict with your "
                                                    "own key; appended to the run ledger")
    approve.add_argument("run_dir", metavar="RUN_DIR")
    approve.add_argument("--key", required=True, metavar="APPROVER.key", help="your P-256 private key (not a gate key)")
    approve.add_argument("--reject", action="store_true", help="sign a rejection instead")
    approve.add_argument("--comment", required=True, help="what you checked and why you decide so")
    approve.add_argument("--acknowledge", type=int, action="append", metavar="N",
                         help="needs_review verdicts: acknowledge review item N after reading it (repeat for each)")
    approve.add_argument("--public-key", metavar="KEY", help="the gate's public key (default: your trust list)")
    add_release_policy_arguments(approve)
    approve.set_defaults(handler=cmd_approve)
