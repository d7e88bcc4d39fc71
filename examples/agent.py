#!/usr/bin/env python3
"""A stand-in for an AI coding agent: it holds a model API key and launches the child
processes an agent launches (a shell pipeline, a tool, a PATH search, a failing command).

Run it with routing on and every child runs in the `user` context instead:

    ctx run --route-to user -- python3 examples/agent.py          # as the caller
    ctx exec --context platform -- python3 examples/agent.py      # platform routes on
"""
import os
import subprocess

key = os.environ.get("ANTHROPIC_API_KEY", "<not set>")
print(f"[agent] pid {os.getpid()} uid {os.getuid()} holds ANTHROPIC_API_KEY={key}")

probe = (
    'echo "  child: uid=$(id -u) user=$(id -un)"; '
    'echo "  child: ANTHROPIC_API_KEY=${ANTHROPIC_API_KEY:-<not visible>}"; '
    'echo "  child: AWS_ACCESS_KEY_ID=${AWS_ACCESS_KEY_ID:-<not set>}"'
)
print("[agent] subprocess.run(['sh', '-c', ...]):")
subprocess.run(["sh", "-c", probe], check=True)

print("[agent] os.system(...): how many processes can a child see?")
os.system("echo \"  child sees $(ps -eo pid= | wc -l) processes\"")

print("[agent] a missing tool raises FileNotFoundError, as locally:")
try:
    subprocess.run(["no-such-tool"])
except FileNotFoundError as e:
    print(f"  FileNotFoundError: {e.filename}")

rc = subprocess.run(["sh", "-c", "exit 7"]).returncode
print(f"[agent] a child's exit code comes back: {rc}")
