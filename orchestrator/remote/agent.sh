# Node-side agent in POSIX sh: agent.py's dead-man switch for hosts without Python, and for short commands.
#
#   $ ssh node3 sh -c "$(cat agent.sh)" orch-agent RUN_ID CWD CMD ARGS...      # quoted once, by the head
#
# What fanout.py sends for `orchestrator run` (no --env): the command travels as arguments (shlex-quoted once
# at the edge, never re-evaluated here), so env values would show in the node's process list: commands with
# env use agent.py, which reads them on stdin. Same contract as agent.py: the command runs in its own session
# with ORCH_RUN_ID=<run id> and ORCH_RUN_AGENT=<this shell's pid> in its environment (not in ours: the scan
# below must not find this shell); stdin is the control channel, and when it closes (head killed, connection
# lost) or this shell gets SIGTERM/SIGINT/SIGHUP, the command's group and every process carrying this agent's
# token are sent SIGTERM, then SIGKILL after 2 s, all within 5 s. When the command exits on its own, what it
# left behind (its group, or children that setsid'd or double-forked away) is killed the same way.
#
# Why sh: Python's start-up alone is ~6 ms of CPU per host (agent.py ~12 ms), `bash -c true` ~1 ms; this
# agent costs ~3-4 ms, which is what lets `orchestrator run` keep up with pdsh when many hosts share cores.
# Unlike agent.py it cannot become a subreaper, so leftovers are found by token, reading only the processes
# whose PIDs were handed out since the command started (its descendants all are): for a short command that is
# a handful, often none (no grep at all); after a long run, or when the PID counter wrapped, all of them.

r=$1 d=$2
shift 2
[ -z "$d" ] || cd "$d" || exit 127

tokened() {  # t = PIDs of processes carrying this agent's token
  read -r _ _ _ _ last </proc/loadavg  # the last PID handed out: the command's descendants are in (c, last]
  f=
  if [ "$last" -ge "$c" ] && [ $((last - c)) -le 4096 ]; then
    n=$c
    while [ $n -lt "$last" ]; do
      n=$((n + 1))
      [ $n = "$w" ] || [ ! -e /proc/$n/environ ] || f="$f /proc/$n/environ"
    done
  else  # a long run, or the PID counter wrapped: read them all
    f="/proc/[1-9]*/environ"  # expanded where $f is used
  fi
  t=
  [ -n "$f" ] || return 0
  for p in $(grep -lzxF "ORCH_RUN_AGENT=$$" $f 2>/dev/null); do p=${p#/proc/}; t="$t ${p%/environ}"; done
}

sweep() {  # SIGTERM the command's group and tokened processes until none is left; SIGKILL after 2 s
  s=TERM n=0
  while :; do
    tokened
    kill -$s -"$c" $t 2>/dev/null
    [ -n "$t" ] || return 0
    [ $n -lt 45 ] || return 1
    [ $n -lt 20 ] || s=KILL
    sleep 0.1
    n=$((n + 1))
  done
}

x=
trap 'x=143' TERM
trap 'x=130' INT
trap 'x=129' HUP
exec 3<&0
ORCH_RUN_ID=$r ORCH_RUN_AGENT=$$ setsid "$@" </dev/null 3<&- &
c=$!
(while read -r _; do :; done; kill -TERM $$) <&3 2>/dev/null &
w=$!
exec 3<&-
alive=1
while [ -z "$x" ]; do  # a signal that came before `wait` started is in $x already: do not wait then
  wait "$c"
  rc=$?
  kill -0 "$c" 2>/dev/null || { alive=; break; }  # reaped: its PID is no longer ours to signal
done
kill "$w" 2>/dev/null
if [ -n "$x" ]; then  # signalled (or the control channel closed): the run is over
  # by PID too: before its exec the command has no token and no group yet (not reaped: the PID is still ours)
  [ -z "$alive" ] || kill -TERM "$c" 2>/dev/null
  sweep
  exit "$x"
fi
sweep
exit "$rc"
