#!/bin/sh
# cowsay in plain POSIX sh: the message in a speech bubble wrapped at 40 columns, then the cow.
# Writes $LILYPAD_OUTPUTS_DIR/cowsay.txt and the same text to stdout (with --stdout-only: stdout).
#
# It must give the same bytes under dash (the process executor) and busybox ash (the docker
# image), so it uses shell builtins only, and the manifest sets LC_ALL=C so that both count a
# line's width in bytes.
set -eu

width=40
if [ "${1-}" = "--stdout-only" ]; then
	out=/dev/null # Lilypad's v0.0.1-v0.0.3 (grycap/cowsay's cowsay) wrote the cow to stdout only
else
	out="${LILYPAD_OUTPUTS_DIR:?LILYPAD_OUTPUTS_DIR is not set}/cowsay.txt"
	: >"$out"
fi

say() {
	printf '%s\n' "$1" >>"$out"
	printf '%s\n' "$1"
}

repeat() { # repeat CHAR COUNT
	r=''
	i=0
	while [ "$i" -lt "$2" ]; do
		r="$r$1"
		i=$((i + 1))
	done
	printf '%s' "$r"
}

# Wrap the words into lines of at most $width bytes, one per line of $lines.
lines=''
line=''
push() {
	lines="$lines$1
"
}
add_word() {
	if [ -z "$line" ]; then
		line=$1
	elif [ $((${#line} + 1 + ${#1})) -le "$width" ]; then
		line="$line $1"
	else
		push "$line"
		line=$1
	fi
}
set -f # a '*' in the message is a word, not a glob
for word in ${MESSAGE-}; do
	while [ "${#word}" -gt "$width" ]; do # a word longer than a line is cut
		rest=$word
		i=0
		while [ "$i" -lt "$width" ]; do
			rest=${rest#?}
			i=$((i + 1))
		done
		add_word "${word%"$rest"}"
		word=$rest
	done
	add_word "$word"
done
push "$line"
set +f

longest=0
count=0
IFS='
'
for l in $lines; do
	count=$((count + 1))
	[ "${#l}" -gt "$longest" ] && longest=${#l}
done
[ "$count" -eq 0 ] && count=1 && longest=1 && lines=' '

say " $(repeat _ $((longest + 2)))"
n=0
for l in $lines; do
	n=$((n + 1))
	if [ "$count" -eq 1 ]; then
		left='<' right='>'
	elif [ "$n" -eq 1 ]; then
		left='/' right='\'
	elif [ "$n" -eq "$count" ]; then
		left='\' right='/'
	else
		left='|' right='|'
	fi
	say "$left $l$(repeat ' ' $((longest - ${#l}))) $right"
done
say " $(repeat - $((longest + 2)))"
say '        \   ^__^'
say '         \  (oo)\_______'
say '            (__)\       )\/\'
say '                ||----w |'
say '                ||     ||'
