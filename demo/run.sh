#!/usr/bin/env bash
# The tunneld demo: a throwaway sshd on loopback, an SMTP server behind it, and tunneld
# carrying a mail client's connection from localhost:PORT through SSH to that server.
# Everything lives in a temporary directory and is cleaned up at the end.
set -euo pipefail
cd "$(dirname "$0")/.."

need=()
command -v sshd >/dev/null 2>&1 || [ -x /usr/sbin/sshd ] || need+=(openssh-server)
command -v ssh-keygen >/dev/null 2>&1 || need+=(openssh-client)
command -v python3 >/dev/null 2>&1 || need+=(python3)
pkg-config --exists libssh2 2>/dev/null || need+=(libssh2-1-dev pkg-config)
if [ ${#need[@]} -gt 0 ]; then
    echo "demo: installing ${need[*]} (Debian packages)"
    if [ "$(id -u)" -eq 0 ]; then SUDO=; else SUDO=sudo; fi
    $SUDO apt-get update -qq && $SUDO apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
fi

echo "demo: building tunneld"
swift build -c release 2>&1 | tail -1
TUNNELD=$(swift build -c release --show-bin-path)/tunneld

work=$(mktemp -d /tmp/tunneld-demo.XXXXXX)
pids=()
cleanup() {
    for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
    wait 2>/dev/null || true
    rm -rf "$work"
}
trap cleanup EXIT

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
wait_port() {
    for _ in $(seq 1 100); do
        python3 -c "import socket,sys; socket.create_connection(('127.0.0.1',$1),timeout=0.2)" 2>/dev/null && return 0
        sleep 0.05
    done
    echo "demo: nothing listens on port $1" >&2
    return 1
}

ssh_port=$(free_port); smtp_port=$(free_port); tunnel_port=$(free_port)
user=$(id -un)

echo "demo: starting sshd on 127.0.0.1:$ssh_port (throwaway host key, one authorized key)"
ssh-keygen -q -t ed25519 -N '' -C demo-host -f "$work/host_key"
ssh-keygen -q -t ed25519 -N '' -C demo-user -f "$work/id_ed25519"
# The key may only forward to the SMTP server: the kiosk-style restriction.
echo "restrict,port-forwarding,permitopen=\"127.0.0.1:$smtp_port\",command=\"/bin/false\" $(cat "$work/id_ed25519.pub")" > "$work/authorized_keys"
echo "[127.0.0.1]:$ssh_port $(cut -d' ' -f1,2 "$work/host_key.pub")" > "$work/known_hosts"
[ "$(id -u)" -eq 0 ] && mkdir -p /run/sshd
cat > "$work/sshd_config" <<CONF
ListenAddress 127.0.0.1:$ssh_port
HostKey $work/host_key
AuthorizedKeysFile $work/authorized_keys
PidFile none
StrictModes no
UsePAM no
PermitRootLogin prohibit-password
PasswordAuthentication no
LogLevel INFO
CONF
"$(command -v sshd || echo /usr/sbin/sshd)" -D -e -f "$work/sshd_config" 2>"$work/sshd.log" &
pids+=($!)

echo "demo: starting an SMTP server on 127.0.0.1:$smtp_port"
python3 demo/smtp_server.py "$smtp_port" >"$work/smtp.log" 2>&1 &
pids+=($!)

mkdir "$work/services.d"
cat > "$work/services.d/smtp" <<CONF
# The roaming laptop's mail, carried through SSH.
service smtp
{
    port            = $tunnel_port
    server          = $user@127.0.0.1:$ssh_port
    server_args     = 127.0.0.1 $smtp_port
    identity        = $work/id_ed25519
    identity_agent  = none
    known_hosts     = $work/known_hosts
    linger          = 5
}
CONF
echo "demo: the stanza ($work/services.d/smtp):"
sed 's/^/    /' "$work/services.d/smtp"
echo
echo "demo: tunneld --check"
"$TUNNELD" --check -f "$work/services.d" | sed 's/^/    /'

wait_port "$ssh_port"; wait_port "$smtp_port"
"$TUNNELD" -f "$work/services.d" 2>"$work/tunneld.log" &
pids+=($!)
# Wait for tunneld to say it listens (connecting to find out would open a tunnel).
for _ in $(seq 1 100); do grep -q "notice started" "$work/tunneld.log" && break; sleep 0.05; done

echo
echo "demo: sending a message to localhost:$tunnel_port (client lines start with >, server lines with <)"
python3 - "$tunnel_port" <<'PY'
import socket, sys
conn = socket.create_connection(("127.0.0.1", int(sys.argv[1])), timeout=10)
reader = conn.makefile("rb")
def server():
    line = reader.readline().decode().rstrip()
    print("    < " + line)
    return line
def client(line):
    print("    > " + line)
    conn.sendall((line + "\r\n").encode())
server()
for line in ["EHLO laptop.example.org", "MAIL FROM:<me@example.org>", "RCPT TO:<you@example.org>", "DATA"]:
    client(line); server()
for line in ["Subject: hello through tunneld", "", "Carried over SSH, no netcat on the server.", "."]:
    client(line)
server()
client("QUIT"); server()
PY

sleep 0.2
echo
echo "demo: tunneld's log"
sed 's/^/    /' "$work/tunneld.log"
echo
echo "demo: the SMTP server's log"
sed 's/^/    /' "$work/smtp.log"
echo
echo "demo: done; cleaning up"
