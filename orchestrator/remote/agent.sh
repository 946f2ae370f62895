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
# left behind (its group, or children that setsid'd or double-forked away) is killed the same way. The command
# starts with default signal dispositions (SIGINT and SIGQUIT too, which sh ignores in background jobs).
#
# Why sh: Python's start-up alone is ~6 ms of CPU per host (agent.py ~12 ms), `bash -c true` ~1 ms; this
# agent costs ~3-4 ms, which is what lets `orchestrator run` keep up with pdsh when many hosts share cores.
# Unlike agent.py it cannot become a subreaper, so leftovers are found by token, reading only the processes
# whose PIDs were handed out since the command started (its descendants all are): for a short command that is
# a handful, often none (no grep at all); after a long run, or when the PID counter wrapped, all of them.

r=$1 d=$2
shift 2
[ -z "$d" ] || cd "$d" || exit 127

tokened() {  # t = PIDs of processes carrying this agent's token (sh variables are global: i, not n)
  read -r _ _ _ _ last </proc/loadavg  # the last PID handed out: the command's descendants are in (c, last]
  f=
  if [ "$last" -ge "$c" ] && [ $((last - c)) -le 4096 ]; then
    i=$c
    while [ $i -lt "$last" ]; do
      i=$((i + 1))
      [ $i = "$w" ] || [ ! -e /proc/$i/environ ] || f="$f /proc/$i/environ"
    done
  else  # a long run, or the PID counter wrapped: read them all
    f="/proc/[1-9]*/environ"  # expanded where $f is used
  fi
  t=
  [ -n "$f" ] || return 0
  for p in $(grep -lzxF "ORCH_RUN_AGENT=$$" $f 2>/dev/null); do p=${p#/proc/}; t="$t ${p%/environ}"; done
}

starting() {  # the command is ours (not reaped) and not a zombie: it may still be before its exec (no token yet)
  [ -n "$alive" ] && read -r l 2>/dev/null </proc/$c/stat && l=${l##*") "} && [ "${l%% *}" != Z ]
}

sweep() {  # SIGTERM the command's group, its PID while it starts, and tokened processes; SIGKILL after 2 s.
  # Done when a scan finds nothing at once after the command ended by itself, or else (it was stopped, or
  # something was found) after 3 empty scans in a row: a process killed between two scans may have forked,
  # and its child shows only in the next one.
  s=TERM k=0 e=3
  [ -z "$alive" ] || e=0
  while :; do
    tokened
    kill -$s -"$c" $t 2>/dev/null
    if starting; then
      kill -$s "$c" 2>/dev/null
      e=0
    elif [ -n "$t" ]; then
      e=0
    else
      [ $e -lt 2 ] || return 0
      e=$((e + 1))
    fi
    [ $k -lt 45 ] || return 1
    [ $k -lt 20 ] || s=KILL
    sleep 0.1
    k=$((k + 1))
  done
}

start() {  # the command in the background, in its own session; c = its PID; rc = its exit code once it ended
  ORCH_RUN_ID=$r ORCH_RUN_AGENT=$$ $e setsid "$@" </dev/null &
  c=$! alive=1
  while [ -z "$x" ]; do  # a signal that came before `wait` started is in $x already: do not wait then
    wait "$c"
    rc=$?
    kill -0 "$c" 2>/dev/null || { alive=; break; }  # reaped: its PID is no longer ours to signal
  done
}

x=
trap 'x=143' TERM
trap 'x=130' INT
trap 'x=129' HUP
exec 3<&0
# The watcher: TERM when the control channel closes, repeated a few times: a TERM that lands between start's
# check of $x and its `wait` is eaten by that wait's start, and the next one interrupts it.
(while read -r _; do :; done; kill -TERM $$ && for i in 1 2 3 4 5 6; do sleep 0.5; kill -TERM $$ || break; done
) <&3 >/dev/null 2>&1 &  # holds none of the head's output
w=$!
exec 3<&-
# sh starts background jobs with SIGINT and SIGQUIT ignored, and an exec keeps that: env --default-signal
# (coreutils 8.31+) gives the command the default dispositions back.
e="env --default-signal=INT,QUIT"
start "$@"
if [ -z "$x" ] && [ "$rc" = 125 ] && ! env --default-signal=INT true 2>/dev/null; then
  e=  # an older env refused the option (exit 125) before running anything: run the command without it
  start "$@"
fi
exec 2>/dev/null  # the agent has nothing more to say, and bash (as sh) would report the watcher's death
kill -KILL "$w"  # not TERM: just after its fork it still has our trap, which would eat it
sweep
exit "${x:-$rc}"
