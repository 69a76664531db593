package main

// The bounded per-process output buffer that GET, follow and run streams all read from, ported from
// emulator/agent/output_buffer.py. Lines have sequence numbers that grow forever; past the limit (each line
// costs its byte length plus one) the OLDEST lines are dropped and counted per stream, and every view then
// starts with a marker line (see __main__.py, TLE_OUTPUT_LIMIT_BYTES). All methods need the table lock (mu).

import (
	"fmt"
	"strings"
	"time"
	"unicode/utf8"
)

const (
	streamStdout = 0
	streamStderr = 1
)

var streamNames = [2]string{"stdout", "stderr"}

// outputLine is one line: stream, text (UTF-8, invalid bytes replaced), when it was read (ms since the
// epoch), and its cost against the limit.
type outputLine struct {
	stream int
	text   string
	ts     int64
	cost   int
}

func nowMs() int64 { return time.Now().UnixMilli() }

func lineOf(stream int, raw []byte, ts int64) outputLine {
	return outputLine{stream, decodeReplace(raw), ts, len(raw) + 1}
}

// decodeReplace decodes UTF-8 with every invalid byte replaced by U+FFFD, as Python's
// bytes.decode("utf-8", "replace") does for stray bytes.
func decodeReplace(raw []byte) string {
	if utf8.Valid(raw) {
		return string(raw)
	}
	var sb strings.Builder
	sb.Grow(len(raw) + 8)
	for len(raw) > 0 {
		r, size := utf8.DecodeRune(raw)
		if r == utf8.RuneError && size == 1 {
			sb.WriteRune(utf8.RuneError)
		} else {
			sb.Write(raw[:size])
		}
		raw = raw[size:]
	}
	return sb.String()
}

type outputBuffer struct {
	limit      int
	lines      []outputLine
	base       int // seq of lines[0]
	totalBytes int
	dropped    [2]int
	closed     bool
	changed    chan struct{} // closed (and replaced) on every change: the followers' wake-up
}

func newOutputBuffer(limit int) *outputBuffer {
	if limit < 1 {
		limit = 1
	}
	return &outputBuffer{limit: limit, changed: make(chan struct{})}
}

func (b *outputBuffer) firstSeq() int { return b.base }
func (b *outputBuffer) nextSeq() int  { return b.base + len(b.lines) }

func (b *outputBuffer) slice(start, end int) []outputLine {
	return b.lines[start-b.base : end-b.base]
}

func (b *outputBuffer) extend(items []outputLine) {
	if len(items) == 0 {
		return
	}
	b.lines = append(b.lines, items...)
	for _, it := range items {
		b.totalBytes += it.cost
	}
	if b.totalBytes > b.limit {
		b.trim()
	}
	b.notify()
}

// trim drops the oldest lines until the cost fits (the newest line is always kept).
func (b *outputBuffer) trim() {
	n := 0
	for b.totalBytes > b.limit && n < len(b.lines)-1 {
		it := b.lines[n]
		b.totalBytes -= it.cost
		b.dropped[it.stream]++
		n++
	}
	if n > 0 {
		b.base += n
		// copy into a fresh slice now and then so that dropped lines' memory is given back
		if n > 1024 && n*2 > len(b.lines) {
			b.lines = append([]outputLine(nil), b.lines[n:]...)
		} else {
			b.lines = b.lines[n:]
		}
	}
}

func (b *outputBuffer) close()  { b.closed = true; b.notify() }
func (b *outputBuffer) reopen() { b.closed = false }

func (b *outputBuffer) notify() {
	close(b.changed)
	b.changed = make(chan struct{})
}

func (b *outputBuffer) marker(streams []int) (string, bool) {
	n := 0
	for _, s := range streams {
		n += b.dropped[s]
	}
	if n <= 0 {
		return "", false
	}
	return markerText(n, b.limit), true
}

// snapshot is the lines of `streams` (both = all), led by the marker when lines were dropped.
func (b *outputBuffer) snapshot(streams []int) []string {
	out := []string{}
	if m, ok := b.marker(streams); ok {
		out = append(out, m)
	}
	all := len(streams) == 2
	for _, it := range b.lines {
		if all || it.stream == streams[0] {
			out = append(out, it.text)
		}
	}
	return out
}

func markerText(n, limit int) string {
	return fmt.Sprintf("[tensorlake-emulator: %d earlier lines dropped, output buffer limit %d bytes]", n, limit)
}
