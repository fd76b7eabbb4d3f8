#!/bin/busybox sh
# /init of an arm64 L1 host (scripts/arm64-stack): Debian's libvirt, QEMU and python3 unpacked
# from their .debs, psci-hook unpacked from its .deb. No systemd, no maintainer scripts: this file
# does what they would have done (users, directories, configuration) and starts what the units
# would start, reading each ExecStart= from psci-hook's own unit files. Then it sources /plan.sh
# (written per boot by scripts/arm64-stack) and powers off. Every result is printed on the serial
# console between "@@stack" markers.
/bin/busybox mount -t devtmpfs devtmpfs /dev
/bin/busybox mount -t proc proc /proc
/bin/busybox mount -t sysfs sysfs /sys
/bin/busybox mount -t tmpfs tmpfs /run
/bin/busybox mkdir -p /usr/local/bin /tmp /root /var/log
/bin/busybox --install -s /usr/local/bin
export PATH=/usr/sbin:/usr/bin:/sbin:/bin:/usr/local/bin HOME=/root LC_ALL=C
echo 1 > /proc/sys/kernel/printk
M=@@stack
# Per-boot settings (HOST, LIBVIRTD_EXTRA, LIBVIRTD_ARGS, QEMU_EXTRA, NET), from scripts/arm64-stack.
[ -f /env.sh ] && . /env.sh
up() { cut -d' ' -f1 /proc/uptime; }
ev() { echo "$M event $* t=$(up)"; }
# One command's output (stdout and stderr) between markers, with its exit status.
block() {
    id=$1; shift
    echo "$M begin $id"
    "$@" 2>&1
    rc=$?
    echo "$M end $id rc=$rc t=$(up)"
    return $rc
}
ev boot release=$(uname -r) kvm=$([ -c /dev/kvm ] && echo yes || echo no)

# What adduser/libvirt's postinst would have created; libvirtd's QEMU driver refuses to start
# without the libvirt-qemu user.
HOST=${HOST:-l1}
hostname "$HOST"
echo "127.0.0.1 localhost $HOST" > /etc/hosts
[ -n "$EXTRA_HOSTS" ] && printf '%b\n' "$EXTRA_HOSTS" >> /etc/hosts
grep -q '^root:' /etc/passwd 2>/dev/null || echo 'root:x:0:0:root:/root:/bin/sh' >> /etc/passwd
grep -q '^root:' /etc/group 2>/dev/null || echo 'root:x:0:' >> /etc/group
echo 'libvirt-qemu:x:64055:108::/var/lib/libvirt:/usr/sbin/nologin' >> /etc/passwd
printf 'kvm:x:108:\nlibvirt-qemu:x:64055:\nlibvirt:x:109:\n' >> /etc/group
rm -rf /var/run; ln -s /run /var/run
mkdir -p /etc/libvirt /var/lib/libvirt/qemu /var/log/libvirt/qemu /run/libvirt /var/cache/libvirt
cat > /etc/libvirt/libvirtd.conf <<X
unix_sock_group = "root"
auth_unix_ro = "none"
auth_unix_rw = "none"
log_outputs = "3:file:/var/log/libvirt/libvirtd.log"
$LIBVIRTD_EXTRA
X
cat > /etc/libvirt/qemu.conf <<X
user = "root"
group = "root"
security_driver = "none"
cgroup_controllers = [ ]
$QEMU_EXTRA
X
# syslog: where the hook and the watcher send their events (no journald here).
syslogd -O /var/log/syslog -s 4000

# -k 0: no keepalive (under emulation a busy daemon misses its pings and virsh gives up)
V="virsh -k 0 -c qemu:///system"
NS=https://psci-hook.org/xmlns/record/1
HOOK=/etc/libvirt/hooks/qemu.d/50-psci-hook
HOOK_AWAY=/root/50-psci-hook.away
# The command a psci-hook unit runs (its ExecStart=), from the unit file the .deb installed.
unit_exec() {
    for d in /lib/systemd/system /usr/lib/systemd/system; do
        [ -f "$d/$1.service" ] && sed -n 's/^ExecStart=//p' "$d/$1.service" && return 0
    done
    echo "false no-unit-$1"
}

# psci-hook-probe.service: before the libvirt daemon (RuntimeDirectory=psci-hook made first).
mkdir -p /run/psci-hook
block probe $(unit_exec psci-hook-probe)
ev probed

ev versions qemu=$(qemu-system-aarch64 --version | sed -n '1s/.*version \([^ ]*\).*/\1/p') \
    libvirt=$(libvirtd --version | sed 's/.* //')
virtlogd -d
DAEMON_RUNNING=no
# libvirtd with psci-hook's hook in place ("hook") or moved aside ("nohook": libvirt finds no
# qemu hook when it starts, so none runs for this daemon's lifetime); then what the daemon's
# start pulls in: psci-hook-refresh.service, and psci-hook-watch.service the first time (the
# watcher reconnects by itself when the daemon restarts).
daemon_start() {
    if [ "$1" = nohook ]; then
        [ -e $HOOK ] && mv $HOOK $HOOK_AWAY
    else
        [ -e $HOOK_AWAY ] && mv $HOOK_AWAY $HOOK
    fi
    libvirtd -d $LIBVIRTD_ARGS
    n=0; while [ ! -S /run/libvirt/libvirt-sock ] && [ $n -lt 300 ]; do sleep 0.2; n=$((n+1)); done
    ev daemon hook=$1 socket=$([ -S /run/libvirt/libvirt-sock ] && echo yes || echo no)
    block refresh $(unit_exec psci-hook-refresh)
    if [ ! -e /run/watch.pid ]; then
        $(unit_exec psci-hook-watch) > /var/log/psci-hook-watch.log 2>&1 &
        echo $! > /run/watch.pid
    fi
    DAEMON_RUNNING=$1
}
# Only with no guest running (a daemon restart would run the hook's reconnect for each).
daemon_stop() {
    pid=$(cat /run/libvirtd.pid 2>/dev/null)
    [ -n "$pid" ] && kill "$pid"
    n=0; while [ -n "$pid" ] && [ -d /proc/$pid ] && [ $n -lt 150 ]; do sleep 0.2; n=$((n+1)); done
    rm -f /run/libvirt/libvirt-sock
    ev daemon-stopped
    DAEMON_RUNNING=no
}
pc() { $V qemu-monitor-command "$1" --hmp 'info registers' 2>&1 | grep -o 'PC=[0-9a-f]*' | head -1; }
wait_record() {
    n=0; until $V metadata "$1" $NS >/dev/null 2>&1; do
        sleep 0.5; n=$((n+1)); [ $n -ge 240 ] && break
    done
}
# Define and start a guest, wait for the running watcher to record it.
start_guest() {
    block define.$1 $V define /guests/$1.xml
    block start.$1 $V start $1 || return 1
    wait_record $1
    block record.$1 $V metadata $1 $NS
    ev pc id=$1 $(pc $1)
}
# virsh save, then the image on the console (gzip + base64).
save_guest() {
    block save.$1 $V save $1 /tmp/$1.save || return 1
    ev saved id=$1 md5=$(md5sum < /tmp/$1.save | cut -c1-32) size=$(wc -c < /tmp/$1.save)
    echo "$M state-begin $1"; gzip -c /tmp/$1.save | base64; echo "$M state-end $1"
}
# virsh restore of /state/<image>.save, guest <name>; tagged <phase>.<image>. What follows runs
# in one virsh process (each virsh start costs seconds under emulation).
restore_image() {
    tag=$1.$2
    : > /var/log/libvirt/qemu/$3.log 2>/dev/null
    block restore.$tag $V restore /state/$2.save && sleep 1
    $V 2>&1 <<X
echo $M begin after.$tag
domstate $3
qemu-monitor-command $3 --hmp 'info registers'
metadata $3 $NS
destroy $3
echo $M end after.$tag rc=0
echo $M begin list.$tag
list --all --name
echo $M end list.$tag rc=0
X
    block qemulog.$tag tail -n 8 /var/log/libvirt/qemu/$3.log
}
# Live migration between two L1s (scripts/arm64-stack --migrate): virtio-net from the kernel's
# own Debian package (/mods, in load order), a link-local address on eth0.
net_up() {
    for m in $(cat /mods/order); do insmod /mods/$m.ko 2>&1 | sed 's/^/insmod: /'; done
    ip link set lo up; ip link set eth0 up && ip addr add $1/16 dev eth0
    ev net addr=$1 eth0=$(cat /sys/class/net/eth0/operstate 2>/dev/null)
}
# A one-line message between the two L1s (python3 is in the image; busybox nc may lack -l).
wait_signal() {
    python3 -c 'import socket, sys
s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("0.0.0.0", int(sys.argv[1]))); s.listen(1); s.settimeout(900)
c, _ = s.accept(); print(c.recv(200).decode().strip())' "$1"
}
send_signal() {
    python3 -c 'import socket, sys, time
for _ in range(600):
    try:
        socket.create_connection((sys.argv[1], int(sys.argv[2])), 2).sendall(sys.argv[3].encode()); break
    except OSError:
        time.sleep(0.5)' "$1" "$2" "$3"
}
wait_peer() {
    n=0; until virsh -c "$1" version > /dev/null 2>&1; do sleep 1; n=$((n+1)); [ $n -ge 600 ] && break; done
    ev peer uri=$1 waited=$n
}
pc_at() { virsh -c "$1" qemu-monitor-command "$2" --hmp 'info registers' 2>&1 | grep -o 'PC=[0-9a-f]*' | head -1; }
# virsh migrate --live of <guest> to <uri>, tagged <phase>.<guest>; afterwards the guest is
# running on the source again (a migrated one destroyed there and started afresh here).
migrate_guest() {
    tag=$1.$2
    ev pc id=src.$tag $(pc $2)
    block record.src.$tag $V metadata $2 $NS
    block migrate.$tag $V migrate --live $2 "$3"
    if virsh -c "$3" domstate $2 > /dev/null 2>&1; then
        sleep 1
        block state.$tag virsh -c "$3" domstate $2
        ev pc id=$tag $(pc_at "$3" $2)
        block record.$tag virsh -c "$3" metadata $2 $NS
        virsh -c "$3" destroy $2 > /dev/null 2>&1
    fi
    block list.$tag virsh -c "$3" list --all --name
    block srcstate.$tag $V domstate $2
    ev pc id=srcafter.$tag $(pc $2)
    if ! $V domstate $2 2>/dev/null | grep -q running; then
        old=$($V metadata $2 $NS 2>/dev/null | grep -o 'time="[^"]*"' | head -1)
        $V start $2 > /dev/null 2>&1
        n=0; while [ "$($V metadata $2 $NS 2>/dev/null | grep -o 'time="[^"]*"' | head -1)" = "$old" ]; do
            sleep 0.5; n=$((n+1)); [ $n -ge 240 ] && break
        done
        ev restarted id=$2 waited=$n
    fi
}
qemu_logs() {
    for g in "$@"; do
        block qemulog.$PHASE.$g tail -n 8 /var/log/libvirt/qemu/$g.log
        : > /var/log/libvirt/qemu/$g.log 2>/dev/null
    done
}
finish() {
    block syslog grep psci-hook /var/log/syslog
    block watchlog tail -n 20 /var/log/psci-hook-watch.log
    block libvirtdlog tail -n 8 /var/log/libvirt/libvirtd.log
    ev done
    poweroff -f
}

[ -d /state ] && block states md5sum /state/*.save
. /plan.sh
finish
