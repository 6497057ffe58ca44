#!/usr/bin/env python3
"""Writes a policy file with 1,000,000 keys, for measuring what `rolegate serve` holds.

The shape follows benches/support/world.rs: 1,000 teams; users of one team with one or two
keys (one prebuilt user role each); 5 % of keys are project keys (one to three per project,
SYSTEM_KEY). Prefixes are 20 random characters; a key's secret is its prefix (development
data only), so `<prefix>.<prefix>` authenticates.

    scripts/policy-1m.py [PATH] [KEYS]      (default /tmp/policy-1m.yaml 1000000)

then `rolegate serve --policy PATH` and read VmRSS in /proc/<pid>/status once /readyz answers
(docs/performance.md, "The server at a million keys").
"""
import hashlib
import random
import sys

path = sys.argv[1] if len(sys.argv) > 1 else "/tmp/policy-1m.yaml"
total = int(sys.argv[2]) if len(sys.argv) > 2 else 1_000_000
random.seed(1)
USER_ROLES = ["DEVELOPER", "DATA_SCIENTIST", "AUDITOR", "ACCOUNT_ADMIN"]
ALNUM = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789"
teams = [f"team-{t:04d}" for t in range(1000)]
users, projects, keys = [], [], []


def add_keys(most, owner):
    """One to `most` keys (fewer at the end); `owner()` gives each one's type, owner and roles."""
    for _ in range(min(random.randint(1, most), total - len(keys))):
        prefix = "".join(random.choices(ALNUM, k=20))
        digest = hashlib.sha256(prefix.encode()).hexdigest()
        keys.append(f"  - {{prefix: {prefix}, secret_sha256: {digest}, {owner()}}}\n")


while len(keys) < total:
    team = random.choice(teams)
    if random.random() < 0.05:
        pid = f"proj-{len(projects):07d}"
        projects.append((pid, team))
        add_keys(3, lambda: f"type: project, project: {pid}, roles: [SYSTEM_KEY]")
    else:
        uid = f"user-{len(users):07d}"
        users.append((uid, team))
        add_keys(2, lambda: f"type: team, user: {uid}, team: {team}, "
                            f"roles: [{random.choice(USER_ROLES)}]")

with open(path, "w") as out:
    out.write("teams:\n")
    out.writelines(f"  - {{id: {t}}}\n" for t in teams)
    out.write("users:\n")
    out.writelines(f"  - {{id: {u}, name: User {u}, teams: [{t}]}}\n" for u, t in users)
    out.write("projects:\n")
    out.writelines(f"  - {{id: {p}, team: {t}}}\n" for p, t in projects)
    out.write("keys:\n")
    out.writelines(keys)
print(f"{path}: {len(teams)} teams, {len(users)} users, {len(projects)} projects, {len(keys)} keys")
