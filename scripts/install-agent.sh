#!/usr/bin/env bash
# Install the Corral agent on a park computer.
#
#   scripts/install-agent.sh --registry URL --token TOKEN [--device-id ID]
#       [--camera URI ...] [--wheel FILE|URL] [--prefix DIR] [--python PY]
#   scripts/install-agent.sh --uninstall [--purge] [--prefix DIR]
#
# It creates a virtual environment in PREFIX/opt/corral/venv, installs the agent
# extra (and the gpu extra when an NVIDIA GPU is found) from the agent wheel the
# registry serves (or --wheel), enrols this computer with the one-time TOKEN,
# writes PREFIX/etc/corral/agent.env and a systemd unit with restart-on-failure
# and a watchdog, and starts it when systemd runs and PREFIX is /.
# --uninstall stops and removes all of it but the data directory
# PREFIX/var/lib/corral (the installed models and unsent messages); --purge
# removes that too. --prefix installs under another root (for tests and images).
set -euo pipefail

PREFIX="/"
REGISTRY=""
TOKEN=""
DEVICE_ID=""
WHEEL=""
PYTHON="${PYTHON:-python3}"
CAMERAS=()
UNINSTALL=0
PURGE=0

die() { echo "install-agent: $*" >&2; exit 2; }
say() { echo "install-agent: $*" >&2; }

while [ $# -gt 0 ]; do
  case "$1" in
    --registry) REGISTRY="${2:?--registry needs a URL}"; shift 2 ;;
    --token) TOKEN="${2:?--token needs a value}"; shift 2 ;;
    --device-id) DEVICE_ID="${2:?--device-id needs a value}"; shift 2 ;;
    --camera) CAMERAS+=("${2:?--camera needs a URI}"); shift 2 ;;
    --wheel) WHEEL="${2:?--wheel needs a file or URL}"; shift 2 ;;
    --prefix) PREFIX="${2:?--prefix needs a directory}"; shift 2 ;;
    --python) PYTHON="${2:?--python needs an interpreter}"; shift 2 ;;
    --uninstall) UNINSTALL=1; shift ;;
    --purge) PURGE=1; shift ;;
    -h|--help) sed -n '2,18p' "$0"; exit 0 ;;
    *) die "unknown option $1 (see --help)" ;;
  esac
done

PREFIX="${PREFIX%/}"
VENV="$PREFIX/opt/corral/venv"
ETC="$PREFIX/etc/corral"
DATA="$PREFIX/var/lib/corral"
UNIT="$PREFIX/etc/systemd/system/corral-agent.service"
systemd_live() { [ -z "$PREFIX" ] && [ -d /run/systemd/system ] && command -v systemctl >/dev/null; }

if [ "$UNINSTALL" = 1 ]; then
  if systemd_live; then
    systemctl disable --now corral-agent.service >/dev/null 2>&1 || true
  fi
  rm -f "$UNIT"
  systemd_live && systemctl daemon-reload || true
  rm -rf "$PREFIX/opt/corral" "$ETC"
  if [ "$PURGE" = 1 ]; then rm -rf "$DATA"; else say "kept $DATA (models, unsent messages); --purge removes it"; fi
  say "uninstalled"
  exit 0
fi

[ -n "$REGISTRY" ] || die "--registry URL is required"
[ -n "$TOKEN" ] || die "--token TOKEN is required (corral token create, on the registry)"
"$PYTHON" -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else 1)' 2>/dev/null ||
  die "$PYTHON is not Python 3.11 or newer; pass --python or install python3.11"
if [ -z "$DEVICE_ID" ]; then
  DEVICE_ID="$(hostname | tr 'A-Z_.' 'a-z--' | tr -cd 'a-z0-9-' | cut -c1-63)"
fi
[ ${#CAMERAS[@]} -gt 0 ] || CAMERAS=("v4l2:/dev/video0")
[ -z "$WHEEL" ] && WHEEL="${REGISTRY%/}/downloads/corral-agent.whl"

extras="agent"
if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then
  extras="agent,gpu"
  say "NVIDIA GPU found: installing the gpu extra too"
fi

mkdir -p "$PREFIX/opt/corral" "$ETC" "$DATA" "$(dirname "$UNIT")"
chmod 700 "$DATA"
if [ ! -x "$VENV/bin/python" ]; then
  say "creating $VENV"
  "$PYTHON" -m venv "$VENV"
fi
case "$WHEEL" in
  http://*|https://*)
    say "downloading the agent wheel from $WHEEL"
    tmp="$(mktemp -d)"
    trap 'rm -rf "$tmp"' EXIT
    "$VENV/bin/python" - "$WHEEL" "$tmp" <<'PY' || exit 2
import email.message, sys, urllib.error, urllib.request
url, out = sys.argv[1], sys.argv[2]
try:
    with urllib.request.urlopen(url, timeout=60) as r:
        msg = email.message.Message()
        msg["content-disposition"] = r.headers.get("content-disposition", "")
        name = msg.get_param("filename", header="content-disposition") or "corral-agent.whl"
        with open(f"{out}/{name}", "wb") as f:
            f.write(r.read())
except (urllib.error.URLError, OSError) as e:
    detail = e.read().decode(errors="replace") if isinstance(e, urllib.error.HTTPError) else ""
    sys.exit(f"install-agent: cannot download the agent wheel from {url}: {e} {detail}")
PY
    WHEEL="$(ls "$tmp"/*.whl 2>/dev/null)" || exit 2
    ;;
esac
say "installing corral[$extras] from $WHEEL"
"$VENV/bin/python" -m pip install --quiet --disable-pip-version-check "${WHEEL}[$extras]"

say "enrolling $DEVICE_ID with $REGISTRY"
"$VENV/bin/corral" agent enrol --registry "$REGISTRY" --token "$TOKEN" \
  --device-id "$DEVICE_ID" --data-dir "$DATA"

camera_args=""
for c in "${CAMERAS[@]}"; do camera_args+=" --camera $c"; done
umask 077
printf '# Written by install-agent.sh\nCORRAL_CAMERAS=%s\n' "${camera_args# }" >"$ETC/agent.env"
umask 022
sed "s#@PREFIX@#$PREFIX#g" <<'UNIT' >"$UNIT"
# Corral agent: runs the model on this park computer's cameras and reports over MQTT.
# Installed by scripts/install-agent.sh, which fills in @PREFIX@.
[Unit]
Description=Corral agent (model inference on camera frames, OTA updates)
Wants=network-online.target
After=network-online.target

[Service]
Type=notify
EnvironmentFile=@PREFIX@/etc/corral/agent.env
ExecStart=@PREFIX@/opt/corral/venv/bin/corral agent run --data-dir @PREFIX@/var/lib/corral $CORRAL_CAMERAS
# The agent tells systemd it is alive every few seconds (sd_notify WATCHDOG=1);
# a hung agent is killed and restarted.
WatchdogSec=60
Restart=on-failure
RestartSec=5
# A clean stop publishes "offline" and flushes the outbox first.
KillSignal=SIGTERM
TimeoutStopSec=30
NoNewPrivileges=true
ProtectSystem=full
ReadWritePaths=@PREFIX@/var/lib/corral

[Install]
WantedBy=multi-user.target
UNIT
if systemd_live; then
  systemctl daemon-reload
  systemctl enable --now corral-agent.service
  say "started corral-agent.service (journalctl -u corral-agent -f)"
else
  say "wrote $UNIT; systemd is not running here (or --prefix is set): start it with systemctl when it is"
fi
say "installed $DEVICE_ID"
