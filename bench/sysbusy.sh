#!/usr/bin/env bash
# Runs a command and prints the whole machine's busy CPU seconds over it (user, nice, system,
# irq, softirq: every process and kernel thread, the page cache's write-back included),
# and its iowait and idle seconds. For changes whose cost moves out of the router's own
# threads (bench/rate-cpu.sh counts only those).
#
#   bench/sysbusy.sh bench/rate-cpu.sh BIN LOAD "" "--pairs 256 --size 64 --messages 3000000 --window 16000"
set -euo pipefail
read -r _ u n s i w q sq _ < <(head -1 /proc/stat)
"$@"
read -r _ u2 n2 s2 i2 w2 q2 sq2 _ < <(head -1 /proc/stat)
hz=$(getconf CLK_TCK)
awk -v b=$(( u2 + n2 + s2 + q2 + sq2 - u - n - s - q - sq )) -v k=$(( s2 + q2 + sq2 - s - q - sq )) \
    -v w=$(( w2 - w )) -v i=$(( i2 - i )) -v hz="$hz" \
    'BEGIN {printf "machine busy %.2f s (system and interrupts %.2f s), iowait %.2f s, idle %.2f s\n", b/hz, k/hz, w/hz, i/hz}'
