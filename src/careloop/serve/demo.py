"""The service in `make demo`: start it on loopback as an EHR would meet it, and send it signed CDS Hooks calls.

`python -m careloop.serve.demo --model BUNDLE --hospital DIR --store DIR --out DIR` makes an EHR key pair (RS384)
and an administrator secret, a throwaway CA and a certificate for 127.0.0.1 (`OUT/tls/`: the service answers over
HTTPS only, and the demo's EHR trusts that CA alone), writes the service config, starts `careloop serve` in a
subprocess, builds each
request's prefetch from the synthetic hospital's Bulk export (the resources an EHR would send), and prints what
comes back: a high-risk discharge, a low-risk one, a child, a discharge to hospice (both out of scope), a call
without prefetch (412), a forged token (401), feedback on a card, the kill switch, and the audit log's
verification. It writes everything it sent and got to `OUT/exchanges.json`.
"""

from __future__ import annotations

import argparse
import collections
import gzip
import json
import os
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import httpx
import orjson
import yaml

from careloop.serve.features import PREFETCH
from careloop.serve.tls import client_context, self_signed

ISS = "https://ehr.demo-hospital.example/fhir"
KEY_OF = {"Patient": "patient", "Encounter": "encounters", "Condition": "conditions", "Observation": "observations",
          "MedicationRequest": "medications", "Procedure": "procedures", "Coverage": "coverage"}


def patient_resources(exports: Path | list[Path], patients: set[str]) -> dict[str, dict[str, list[dict]]]:
    """Each patient's resources from Bulk exports (a full one, then nightly `_since` ones), grouped by prefetch key
    (references as a FHIR server has them). A FHIR server holds one current version of each resource: of copies
    in several exports, the newest by `careloop.ingest.versions` (the rule ingest applies) is kept."""
    from careloop.ingest.versions import rank, version_of

    held: dict[tuple[str, str], tuple[tuple, str, dict]] = {}
    for folder in [exports] if isinstance(exports, Path) else exports:
        for f in sorted(folder.glob("*.ndjson.gz")):
            rtype = f.name.split(".")[0]
            if rtype not in KEY_OF:
                continue
            with gzip.open(f) as fh:
                for line in fh:
                    r = orjson.loads(line)
                    if rtype == "Patient":
                        pid = r["id"]
                    else:
                        ref = next((r[k]["reference"] for k in ("subject", "patient", "beneficiary") if k in r), "")
                        pid = ref.rsplit("/", 1)[-1]
                    if pid not in patients:
                        continue
                    meta = r.get("meta") if isinstance(r.get("meta"), dict) else {}
                    v = rank(version_of(meta.get("lastUpdated"), meta.get("versionId")))
                    key = (rtype, r["id"])
                    if key not in held or v >= held[key][0]:
                        held[key] = (v, pid, r)
    out: dict[str, dict[str, list]] = collections.defaultdict(lambda: collections.defaultdict(list))
    for (rtype, _), (_, pid, r) in held.items():
        out[pid][KEY_OF[rtype]].append(r)
    return out


def prefetch_of(resources: dict[str, list[dict]], templates: Mapping[str, str] = PREFETCH) -> dict:
    """The prefetch an EHR sends for the service's templates (by default the whole record; a service advertises
    its own in discovery): a Patient, and searchset Bundles of what each search selects."""
    pf: dict = {"patient": resources["patient"][0]}
    for key, template in templates.items():
        if key != "patient":
            keep = token_search(template)
            pf[key] = {"resourceType": "Bundle", "type": "searchset",
                       "entry": [{"resource": r} for r in resources.get(key, []) if keep(r)]}
    return pf


def token_search(template: str) -> Callable[[dict], bool]:
    """What a FHIR server keeps of a patient's resources for the `combo-code` search of a template (a resource's
    code or one of its components' codes, as `system|code`, or `system|` for any code of the system); the other
    parameters (the patient) are already applied by `patient_resources`. Only what careloop's templates use."""
    exact: set[str] = set()
    systems: set[str] = set()
    for part in template.partition("?")[2].split("&"):
        name, _, value = part.partition("=")
        if name != "combo-code":
            continue
        for token in value.split(","):
            system, _, code = token.partition("|")
            if code:
                exact.add(token)
            else:
                systems.add(system)
    if not exact and not systems:
        return lambda r: True

    def keep(r: dict) -> bool:
        concepts = [r.get("code") or {}, *((c.get("code") or {}) for c in r.get("component") or [])]
        return any(c.get("system") in systems or f"{c.get('system')}|{c.get('code')}" in exact
                   for cc in concepts for c in cc.get("coding") or [])

    return keep


def wait_for_service(url: str, *, attempts: int = 300, pause: float = 0.05, verify: Any = True) -> None:
    """Return once `url/cds-services` answers; raise RuntimeError if it never does."""
    for _ in range(attempts):
        try:
            httpx.get(f"{url}/cds-services", timeout=0.5, verify=verify)
            return
        except httpx.HTTPError:
            time.sleep(pause)
    raise RuntimeError(f"the service at {url} did not start")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _keys(out: Path):
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import rsa

    from careloop.serve.auth import jwks_for

    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                            serialization.NoEncryption())
    (out / "ehr-private-key.pem").write_bytes(pem)
    return pem, jwks_for({"ehr-demo-1": key})


def _pick(bundle: Path, store: Path) -> tuple[list[dict], float]:
    """Test-split stays: the riskiest and the least risky, scored as training scored them."""
    import numpy as np
    import pyarrow.compute as pc

    from careloop.engines import DuckDBEngine
    from careloop.features.engine import extract
    from careloop.features.spec import FeatureSet
    from careloop.registry import verify
    from careloop.tasks.cohort import build_cohort
    from careloop.tasks.spec import Task

    b = verify(bundle)
    eng = DuckDBEngine(store)
    cohort = build_cohort(Task.from_text((b.path / "task.yaml").read_text()), eng).table
    cohort = cohort.filter(pc.equal(cohort.column("split"), "test"))
    feats = extract(FeatureSet.from_text((b.path / "features.yaml").read_text()), cohort, eng).table
    risk = b.model().predict_proba(feats)
    op = b.metadata["operating_point"]
    band_hi = (op.get("threshold_ci") or [0, op["threshold"]])[1]
    quiet = np.zeros(len(risk), dtype=bool)
    if "deferral_policy.json" in b.files:  # a stay the learned policy leaves to the model, to show its card
        from careloop.deferral import DeferralPolicy

        quiet = DeferralPolicy.from_json((b.path / "deferral_policy.json").read_text()).defers(risk)
    from careloop.serve.app import outside_training

    ranges = b.metadata.get("input_ranges") or {}
    usual = np.array([outside_training(r, ranges) is None for r in feats.select(list(ranges)).to_pylist()]
                     if ranges else [True] * len(risk), dtype=bool)  # the service would defer on the others
    band_lo = (op.get("threshold_ci") or [op["threshold"], 0])[0]
    order = np.argsort(-risk)
    warn = [i for i in order if risk[i] >= band_hi and not quiet[i] and usual[i]]
    deferred = [i for i in order if quiet[i] and usual[i]]
    calm = [i for i in order[::-1] if risk[i] < band_lo and not quiet[i] and usual[i]]
    first = warn[:2] if warn else list(order[:2])
    rows = feats.select(["encounter_id", "patient_id", "age"]).to_pylist()
    chosen = [*first, *(deferred[:1] or order[2:3]), *(calm[1:2] or order[-2:-1]), *(calm[:1] or order[-1:])]
    picked = [dict(rows[i], risk=float(risk[i])) for i in chosen]
    return picked, op["threshold"]


def _port(text: str) -> int:
    """A TCP port number, 1 to 65535 (argparse's `type`)."""
    if not text.isdigit() or not 0 < int(text) < 65536:
        raise argparse.ArgumentTypeError(f"{text!r} is not a port number (1 to 65535)")
    return int(text)


def main(argv: list[str] | None = None) -> int:
    from careloop.serve.auth import new_admin_token, sign_request_token

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", type=Path, required=True)
    ap.add_argument("--hospital", type=Path, required=True)
    ap.add_argument("--store", type=Path, required=True)
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--dashboard-port", type=_port, default=8765, help="port of the dashboard run that follows")
    a = ap.parse_args(argv)
    a.out.mkdir(parents=True, exist_ok=True)
    pem, jwks = _keys(a.out)
    secret, digest = new_admin_token()
    port = _free_port()
    base = f"https://127.0.0.1:{port}"  # CDS Hooks exchanges are over HTTPS: a throwaway CA stands for the hospital's
    ca, cert, cert_key = self_signed(a.out / "tls")
    state = a.out / "state.db"
    state.unlink(missing_ok=True)
    signing = a.out / "audit-ed25519.pem"  # signs the audit log's checkpoints; its .pub.pem verifies them
    if not signing.exists():
        subprocess.run([sys.executable, "-m", "careloop.cli", "audit", "keygen", "--out", str(signing)], check=True,
                       capture_output=True)
    cfg = {"trusted_clients": [{"iss": ISS, "jwks": jwks}], "admin": {"token_sha256": digest, "name": "demo-admin"},
           "state": f"sqlite:///{state}", "base_url": base, "alert": {"repeat_window_h": 72, "deferral": "card"},
           "audit": {"signing_key_file": signing.name, "checkpoint_every": 1000}}  # beside the config files
    (a.out / "service.yaml").write_text(yaml.safe_dump(cfg))
    dash_state = a.out / "dashboard-state.db"  # the dashboard run starts from a fresh state store
    dash_state.unlink(missing_ok=True)
    (a.out / "dashboard.yaml").write_text(yaml.safe_dump(
        cfg | {"base_url": f"http://127.0.0.1:{a.dashboard_port}", "state": f"sqlite:///{dash_state}"}))
    stays, threshold = _pick(a.model, a.store)
    nights = sorted((a.hospital / "updates").glob("day-*"))  # the EHR holds the newest versions, as the store does
    res = patient_resources([a.hospital / "ndjson", *nights], {s["patient_id"] for s in stays})
    from careloop.web.demo import demo_users

    (a.out / "users.yaml").write_text(yaml.safe_dump(demo_users()))  # the dashboard's accounts (hashes only)
    server = subprocess.Popen([sys.executable, "-m", "careloop.cli", "serve", "--model", str(a.model), "--config",
                               str(a.out / "service.yaml"), "--port", str(port), "--dashboard", "--store",
                               str(a.store), "--users", str(a.out / "users.yaml"), "--tls-cert", str(cert),
                               "--tls-key", str(cert_key)])
    log: list[dict] = []
    trust = client_context(ca)  # the EHR trusts the hospital's CA (here the throwaway one) and nothing else
    ehr = httpx.Client(timeout=30, verify=trust)  # one connection, as an EHR keeps: a fresh one costs ~35 ms
    try:
        wait_for_service(base, pause=0.1, verify=trust)
        url = f"{base}/cds-services/readmission-risk"

        def send(title: str, body: dict, token: str | None = None) -> dict:
            token = token or sign_request_token(pem, "ehr-demo-1", ISS, url)
            t0 = time.perf_counter()
            r = ehr.post(url, json=body, headers={"Authorization": f"Bearer {token}"})
            ms = (time.perf_counter() - t0) * 1000
            got = r.json() if r.content else {}
            log.append({"title": title, "status": r.status_code, "ms": round(ms, 1), "response": got})
            print(f"\n== {title}: HTTP {r.status_code} in {ms:.0f} ms")
            for c in got.get("cards", []):
                print(f"  [{c['indicator']}] {c['summary']}")
                for line in c.get("detail", "").splitlines():
                    if line.startswith(("- ", "No risk estimate")):  # the reasons, or why the model defers
                        print(f"      {line}")
            if r.status_code == 200 and not got.get("cards"):
                print("  (no card: the model stays quiet)")
            if got.get("resourceType") == "OperationOutcome":
                print(f"  {got['issue'][0]['diagnostics']}")
            return got

        def request(s: dict, prefetch: dict | None) -> dict:
            body = {"hook": "encounter-discharge", "hookInstance": str(uuid.uuid4()),
                    "context": {"userId": "Practitioner/demo", "patientId": s["patient_id"],
                                "encounterId": s["encounter_id"]}}
            if prefetch is not None:
                body["prefetch"] = prefetch
            return body

        print(f"careloop service at {base}/cds-services (HTTPS only, TLS 1.2 or later; the EHR trusts {ca}); "
              f"alert threshold {threshold:.1%}")
        # the EHR prefetches what the service's discovery document asks for (Observations only of the codes read)
        templates = ehr.get(f"{base}/cds-services").json()["services"][0]["prefetch"]

        def pf_of(s: dict) -> dict:
            return prefetch_of(res[s["patient_id"]], templates)

        sent = pf_of(stays[0]).get("observations", {}).get("entry", [])
        search = templates.get("observations", "")
        tokens = search.partition("combo-code=")[2].split(",") if "combo-code=" in search else []
        print(f"prefetch asked for: {len(templates)} searches; Observations of "
              f"{sum(not t.endswith('|') for t in tokens)} codes and {sum(t.endswith('|') for t in tokens)} code "
              f"systems ({len(sent)} of {len(res[stays[0]['patient_id']].get('observations', []))} for the first "
              "patient)")
        high, low = stays[0], stays[-1]
        got = send(f"discharge of a high-risk patient (risk {high['risk']:.0%})",
                   request(high, pf_of(high)))
        for card in got.get("cards", []):  # where the card's links lead (the stay's page is for signed-in clinicians)
            for link in card.get("links", []):
                status = httpx.get(link["url"], timeout=10, follow_redirects=False, verify=trust).status_code
                print(f"      link: {link['label']}: {link['url']} (HTTP {status}"
                      f"{', sign-in first' if status in (302, 303) else ''})")
        mid = stays[2]
        send(f"a patient in a range where clinicians judge better (risk {mid['risk']:.0%})",
             request(mid, pf_of(mid)))
        send("the same discharge again (no repeat card within the window unless the risk moves)",
             request(mid, pf_of(mid)))
        send(f"discharge of a low-risk patient (risk {low['risk']:.0%})",
             request(low, pf_of(low)))
        child = pf_of(stays[1])
        child["patient"] = dict(child["patient"], birthDate="2016-03-01")
        send("a 10-year-old (out of scope for an adult model)", request(stays[1], child))
        send("the same 10-year-old again (the same deferral is not shown twice within the repeat window)",
             request(stays[1], child))
        hospice = pf_of(stays[1])
        for entry in hospice.get("encounters", {}).get("entry", []):
            if entry["resource"]["id"] == stays[1]["encounter_id"]:  # disposition recorded at discharge: hospice
                entry["resource"] = {**entry["resource"], "hospitalization": {
                    **entry["resource"].get("hospitalization", {}), "dischargeDisposition": {"coding": [
                        {"system": "http://terminology.hl7.org/CodeSystem/discharge-disposition", "code": "hosp"}]}}}
        send("a discharge to hospice (the model's task excludes it)", request(stays[1], hospice))
        send("no prefetch and no FHIR access", request(stays[3], None))
        forged = sign_request_token(pem, "ehr-demo-1", "https://attacker.example", url)
        send("a token from an untrusted issuer", request(high, pf_of(high)), forged)
        if got.get("cards") and got["cards"][0].get("overrideReasons"):
            card = got["cards"][0]
            fb_url = f"{url}/feedback"
            fb = {"feedback": [{"card": card["uuid"], "outcome": "overridden",
                                "overrideReason": {"reason": card["overrideReasons"][0]},
                                "outcomeTimestamp": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}]}
            r = ehr.post(fb_url, json=fb, headers={
                "Authorization": f"Bearer {sign_request_token(pem, 'ehr-demo-1', ISS, fb_url)}"})
            print(f"\n== feedback (overridden: {card['overrideReasons'][0]['display']}): HTTP {r.status_code} "
                  f"{r.json()}")
        key = json.loads((a.model / "MANIFEST.json").read_text())["bundle_id"][:12]
        admin = {"Authorization": f"Bearer {secret}"}
        thr_url = f"{base}/admin/models/{key}/threshold"
        print(f"\n== the alert threshold (GET /admin/models/{key}/threshold): "
              f"{_threshold_text(ehr.get(thr_url, headers=admin).json())}")
        calm = stays[3]
        lower = round(calm["risk"] - 0.0005, 4)  # an administrator tries a threshold just under a calm patient's risk
        r = ehr.post(thr_url, json={"threshold": lower}, headers=admin)
        print(f"== an administrator sets {lower:.2%} instead: HTTP {r.status_code}, "
              + (_threshold_text(r.json()) if r.status_code == 200 else r.json()["issue"][0]["diagnostics"]))
        send(f"the low-risk patient's discharge under the administrator's threshold (risk {calm['risk']:.1%})",
             request(calm, pf_of(calm)))
        r = ehr.post(thr_url, json={"threshold": None}, headers=admin)
        print(f"== back to the bundle's operating point: HTTP {r.status_code}, version {r.json().get('version')}")
        ehr.post(f"{base}/admin/models/{key}/enabled", json={"enabled": False}, headers=admin)
        send("the same discharge after an administrator flipped the kill switch",
             request(high, pf_of(high)))
        ehr.post(f"{base}/admin/models/{key}/enabled", json={"enabled": True}, headers=admin)
    finally:
        ehr.close()
        server.terminate()
        server.wait(timeout=20)
    (a.out / "exchanges.json").write_text(json.dumps(log, indent=1))
    v = subprocess.run([sys.executable, "-m", "careloop.cli", "audit", "verify", "--state", f"sqlite:///{state}",
                        "--verify-key", str(signing.with_name("audit-ed25519.pub.pem"))],
                       capture_output=True, text=True)
    print(f"\n== audit log: {v.stdout.strip()}")
    rc = v.returncode or _governance_reads(state, a.out)
    print(f"exchanges: {a.out / 'exchanges.json'}; service config: {a.out / 'service.yaml'}")
    return rc


def _threshold_text(t: dict) -> str:
    """The threshold in force and what it gives on the bundle's held-out stays, in one line."""
    v = t.get("validated") or {}
    head = f"{t['threshold']:.1%} ({'the bundle' if t['source'] == 'bundle' else 'an administrator'}'s, " \
           f"version {t['version']})"
    if not v:
        return head
    ci = v["alerts_per_100"]["ci"]
    ppv = v["ppv"]
    return (f"{head}; on {v['stays']:,} held-out stays it gives {v['alerts_per_100']['estimate']:.1f} warnings per "
            f"100 discharges ({ci[0]:.1f}-{ci[1]:.1f}), PPV "
            + (f"{ppv['estimate']:.0%} ({ppv['ci'][0]:.0%}-{ppv['ci'][1]:.0%})" if ppv else "-")
            + f", {v['sensitivity']['estimate']:.0%} of readmissions warned")


def _governance_reads(state: Path, out: Path) -> int:
    """What governance staff read afterwards: the audit report of the CDS calls, and the whole log exported as a
    FHIR Bundle and re-checked away from the database (each reading is itself audited)."""
    url, export = f"sqlite:///{state}", out / "audit-export.json"
    export.unlink(missing_ok=True)
    env = {**os.environ, "COLUMNS": "150"}
    cli = [sys.executable, "-m", "careloop.cli", "audit"]
    report = subprocess.run([*cli, "report", "--state", url, "--kind", "cds-call", "--by", "demo-governance"],
                            capture_output=True, text=True, env=env)
    print(f"\n== audit report (careloop audit report --kind cds-call):\n{report.stdout.rstrip()}")
    exported = subprocess.run([*cli, "export", "--state", url, "--out", str(export), "--by", "demo-governance"],
                              capture_output=True, text=True, env=env)
    checked = subprocess.run([*cli, "check-export", str(export)], capture_output=True, text=True, env=env)
    print(f"== audit export: {exported.stdout.strip()}; {checked.stdout.strip()}")
    return report.returncode or exported.returncode or checked.returncode


if __name__ == "__main__":
    raise SystemExit(main())
