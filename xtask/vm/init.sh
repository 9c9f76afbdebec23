#!/bin/sh
# PID 1 of the vm-test guest: mount what tuneprobe needs, load the modules the
# workloads need, run tuneprobe while producing each signal in its own cgroup (and
# network namespace), and print the results and the kernel's own counters on the serial
# console as `@@TPVM key=value` lines and `@@TPVM-BEGIN name` ... `@@TPVM-END name`
# blocks, which `cargo xtask vm-test` parses. Then power off.
export PATH=/bin:/sbin:/usr/bin:/usr/sbin
# A foreign architecture's busybox (arm64) comes with its shell link only: link the
# other applets here, where it runs.
[ -e /bin/mount ] || /bin/busybox --install -s /bin
out() { echo "@@TPVM $*"; }

mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
mkdir -p /tmp /run /sys/fs/cgroup /sys/fs/bpf
mount -t tmpfs tmpfs /tmp
mount -t cgroup2 cgroup2 /sys/fs/cgroup
mount -t bpf bpf /sys/fs/bpf
mount -t tracefs tracefs /sys/kernel/tracing || out "tracefs=unmountable"
for m in $(cat /modules.order); do
    insmod "/modules/$m" 2>/tmp/insmod.err || out "module_failed_$m=$(tr ' \n' '_ ' </tmp/insmod.err)"
done
ip link set lo up
echo "@@TPVM-BEGIN kmsg"; dmesg | grep -i -E "symbol|module" | tail -20; echo "@@TPVM-END kmsg"
out "kernel=$(uname -r)"
out "machine=$(uname -m)"
out "cpus=$(nproc)"
# The kernel's own view of the drop tracepoint: `reason` exists since 5.17, `rx_sk`
# since 6.12 (the check that needs it says so where it cannot apply).
out "kfree_skb_fields=$(awk '/field:/ && !/common_/ { s = $0; sub(/.*field:/, "", s); sub(/;.*/, "", s); n = split(s, w, " "); f = w[n]; gsub(/[*]|\[.*\]/, "", f); printf "%s%s", sep, f; sep = "," }' /sys/kernel/tracing/events/skb/kfree_skb/format 2>/dev/null)"
. /vm.env

# `counter FILE GROUP NAME`: one value from /proc/net/snmp or /proc/net/netstat.
counter() {
    awk -v g="$2:" -v n="$3" '$1 == g { if (!h) { for (i = 2; i <= NF; i++) if ($i == n) c = i; h = 1 } else { print $c; exit } }' "$1"
}
# `cpustat DIR NAME`: one value from a cgroup's cpu.stat.
cpustat() { awk -v n="$2" '$1 == n { print $2 }' "$1/cpu.stat"; }
# `wait_ready FILE`: until FILE has a `ready` line (servers print it once listening).
wait_ready() {
    i=0
    while ! grep -q ready "$1" 2>/dev/null; do
        i=$((i + 1)); [ $i -gt 200 ] && { out "timeout_waiting=$1"; return 1; }
        sleep 0.05
    done
}
cg() { mkdir -p "/sys/fs/cgroup/$1"; out "cgroup_$1=$(stat -c %i /sys/fs/cgroup/$1)"; }
netns_of() { readlink "$1" | tr -cd 0-9; }

echo "+cpu" > /sys/fs/cgroup/cgroup.subtree_control || out "cpu_controller=unavailable"
echo "+io" > /sys/fs/cgroup/cgroup.subtree_control || out "io_controller=unavailable"
for c in drops retrans connects dns dnsserver cpu cpufree block; do cg $c; done
echo "$CPU_QUOTA_US $CPU_PERIOD_US" > /sys/fs/cgroup/cpu/cpu.max

# What tuneprobe says up front works on this kernel; checked against the snapshot's
# probes on the host.
/bin/tuneprobe check --json >/tmp/check.json 2>/tmp/check.err
out "check_exit=$?"
echo "@@TPVM-BEGIN check"; cat /tmp/check.json; echo "@@TPVM-END check"
echo "@@TPVM-BEGIN check_stderr"; cat /tmp/check.err; echo "@@TPVM-END check_stderr"

/bin/tuneprobe snapshot --for "$SNAPSHOT_FOR" --json --kube-api none \
    --pod-logs-dir /nonexistent >/tmp/snapshot.json 2>/tmp/snapshot.err &
TP=$!
wait_ready /tmp/snapshot.err
out "tuneprobe_ready=$(head -c 200 /tmp/snapshot.err | tr ' \n' '_ ')"

# CPU throttling: a busy loop under a quota, and the same loop without one (negative
# control), in parallel with the network workloads (there are two CPUs).
cpu_before=$(cpustat /sys/fs/cgroup/cpu nr_throttled)
cpu_before_us=$(cpustat /sys/fs/cgroup/cpu throttled_usec)
sh -c "echo \$\$ > /sys/fs/cgroup/cpu/cgroup.procs; exec /bin/testload busy $CPU_BUSY_MS" &
CPU=$!
sh -c "echo \$\$ > /sys/fs/cgroup/cpufree/cgroup.procs; exec /bin/testload busy $CPU_BUSY_MS" &
CPUFREE=$!

# Drops: UDP to a closed port in a fresh network namespace is NO_SOCKET, one per
# datagram; the kernel counts the same datagrams as Udp NoPorts. Then datagrams an nft
# rule drops, NETFILTER_DROP, as many as the rule's counter. (Before 5.17 there are no
# reasons: the same drops are at __udp4_lib_rcv and nf_hook_slow.)
echo $$ > /sys/fs/cgroup/drops/cgroup.procs
unshare -n sh -c '
    . /vm.env; out() { echo "@@TPVM $*"; }
    counter() { awk -v g="$2:" -v n="$3" '"'"'$1 == g { if (!h) { for (i = 2; i <= NF; i++) if ($i == n) c = i; h = 1 } else { print $c; exit } }'"'"' "$1"; }
    ip link set lo up
    # Keeps the namespace (and its inode number, the workload key) alive until the end.
    sleep 100000 &
    out "drops_netns=$(readlink /proc/self/ns/net | tr -cd 0-9)"
    before=$(counter /proc/net/snmp Udp NoPorts)
    out "drops_testload=$(/bin/testload udp-send 127.0.0.1:9 $DROPS_COUNT 64 | tr " " _)"
    out "drops_noports=$(( $(counter /proc/net/snmp Udp NoPorts) - before ))"
    # An nft rule drops every datagram to port 7 on input: its counter is the count.
    nft -f /drops.nft || out "drops_nft=failed"
    out "drops_nft_testload=$(/bin/testload udp-send 127.0.0.1:7 $DROPS_NFT_COUNT 64 | tr " " _)"
    out "drops_nft_dropped=$(nft list table inet vmdrops | awk "/counter packets/ { for (i = 1; i < NF; i++) if (\$i == \"counter\") print \$(i + 2) }")"
'

# Retransmits: nft drops the first data packet of a bulk send over loopback; the kernel
# counts the retransmitted segments as Tcp RetransSegs.
echo $$ > /sys/fs/cgroup/retrans/cgroup.procs
unshare -n sh -c '
    . /vm.env; out() { echo "@@TPVM $*"; }
    counter() { awk -v g="$2:" -v n="$3" '"'"'$1 == g { if (!h) { for (i = 2; i <= NF; i++) if ($i == n) c = i; h = 1 } else { print $c; exit } }'"'"' "$1"; }
    ip link set lo up
    # Keeps the namespace (and its inode number, the workload key) alive until the end.
    sleep 100000 &
    out "retrans_netns=$(readlink /proc/self/ns/net | tr -cd 0-9)"
    nft -f /retrans.nft || out "retrans_nft=failed"
    /bin/testload tcp-sink 127.0.0.1:5001 > /tmp/sink.out &
    sink=$!
    i=0; while ! grep -q ready /tmp/sink.out; do i=$((i+1)); [ $i -gt 200 ] && break; sleep 0.05; done
    before=$(counter /proc/net/snmp Tcp RetransSegs)
    /bin/testload tcp-send 127.0.0.1:5001 $RETRANS_BYTES > /dev/null
    out "retrans_segs=$(( $(counter /proc/net/snmp Tcp RetransSegs) - before ))"
    out "retrans_nft_dropped=$(nft list ruleset | awk "/counter packets/ { for (i = 1; i < NF; i++) if (\$i == \"counter\") print \$(i + 2) }")"
    kill $sink
'

# Connections: connects to a port nothing listens on, in their own cgroup and namespace
# (each SYN's refusal is also a NO_SOCKET drop there): each refused, one Tcp AttemptFails
# each.
echo $$ > /sys/fs/cgroup/connects/cgroup.procs
unshare -n sh -c '
    . /vm.env; out() { echo "@@TPVM $*"; }
    counter() { awk -v g="$2:" -v n="$3" '"'"'$1 == g { if (!h) { for (i = 2; i <= NF; i++) if ($i == n) c = i; h = 1 } else { print $c; exit } }'"'"' "$1"; }
    ip link set lo up
    sleep 100000 &
    before=$(counter /proc/net/snmp Tcp AttemptFails)
    out "connects_client=$(/bin/testload tcp-connects 127.0.0.1:5002 $CONNECTS_COUNT 0 | tr " " _)"
    out "connects_attempt_fails=$(( $(counter /proc/net/snmp Tcp AttemptFails) - before ))"
'

# DNS over loopback: the server in its own cgroup, the client in another; the kernel
# counts every query the server receives and every response the client receives as Udp
# InDatagrams.
echo $$ > /sys/fs/cgroup/dns/cgroup.procs
unshare -n sh -c '
    . /vm.env; out() { echo "@@TPVM $*"; }
    counter() { awk -v g="$2:" -v n="$3" '"'"'$1 == g { if (!h) { for (i = 2; i <= NF; i++) if ($i == n) c = i; h = 1 } else { print $c; exit } }'"'"' "$1"; }
    ip link set lo up
    # Keeps the namespace (and its inode number, the workload key) alive until the end.
    sleep 100000 &
    out "dns_netns=$(readlink /proc/self/ns/net | tr -cd 0-9)"
    sh -c "echo \$\$ > /sys/fs/cgroup/dnsserver/cgroup.procs; exec /bin/testload dns-server 127.0.0.1:53 $DNS_DELAY_MS 0" > /tmp/dns.out &
    server=$!
    i=0; while ! grep -q ready /tmp/dns.out; do i=$((i+1)); [ $i -gt 200 ] && break; sleep 0.05; done
    before=$(counter /proc/net/snmp Udp InDatagrams)
    out "dns_client=$(/bin/testload dns-query 127.0.0.1:53 vm.test.local $DNS_COUNT udp 2000 | tr " " _)"
    out "dns_in_datagrams=$(( $(counter /proc/net/snmp Udp InDatagrams) - before ))"
    kill $server
'
# Block IO: direct 4 KiB reads, one at a time, from a loop device under mq-deadline (so
# each request is inserted, then issued; where the kernel takes the scheduler), in their
# own cgroup; the kernel counts them in the cgroup's io.stat.
dd if=/dev/zero of=/tmp/disk.img bs=1M count=4 2>/dev/null
loop=$(losetup -f)
losetup "$loop" /tmp/disk.img || out "block_losetup=failed"
dev=${loop#/dev/}
out "block_device=$dev"
echo mq-deadline > "/sys/block/$dev/queue/scheduler" || out "block_scheduler=unavailable"
# What the device runs: 5.10's loop devices take no scheduler (the write is ignored).
out "block_scheduler_now=$(tr ' ' _ < "/sys/block/$dev/queue/scheduler")"
majmin=$(cat "/sys/block/$dev/dev")
sh -c "echo \$\$ > /sys/fs/cgroup/block/cgroup.procs; exec dd if=$loop of=/dev/null bs=4096 count=$BLOCK_READS iflag=direct" 2>/dev/null
rios=$(awk -v d="$majmin" '$1 == d { for (i = 2; i <= NF; i++) if ($i ~ /^rios=/) { sub("rios=", "", $i); print $i } }' /sys/fs/cgroup/block/io.stat)
out "block_rios=${rios:-0}"
echo $$ > /sys/fs/cgroup/cgroup.procs

wait $CPU; wait $CPUFREE
out "cpu_nr_throttled=$(( $(cpustat /sys/fs/cgroup/cpu nr_throttled) - cpu_before ))"
out "cpu_throttled_usec=$(( $(cpustat /sys/fs/cgroup/cpu throttled_usec) - cpu_before_us ))"
out "cpufree_nr_throttled=$(cpustat /sys/fs/cgroup/cpufree nr_throttled)"
wait $TP
out "tuneprobe_exit=$?"
echo "@@TPVM-BEGIN snapshot"
cat /tmp/snapshot.json
echo "@@TPVM-END snapshot"
echo "@@TPVM-BEGIN stderr"
cat /tmp/snapshot.err
echo "@@TPVM-END stderr"
echo "@@TPVM done=1"
poweroff -f
