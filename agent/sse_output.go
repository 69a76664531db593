package main

// Server-sent events, ported from emulator/agent/sse_output.py: the encoding of output lines, and the
// replay-then-follow stream over an output buffer that `run` and `.../follow` answers are made of.

import (
	"bytes"
	"encoding/json"
	"net/http"
	"strconv"
	"time"
)

const (
	keepaliveInterval = 15 * time.Second
	sseBatchLines     = 5000
)

// jsonStr encodes s as a JSON string, non-ASCII escaped as \uXXXX like Python's json.dumps.
func jsonStr(s string) string {
	var sb bytes.Buffer
	sb.WriteByte('"')
	for _, r := range s {
		switch {
		case r == '"':
			sb.WriteString(`\"`)
		case r == '\\':
			sb.WriteString(`\\`)
		case r == '\n':
			sb.WriteString(`\n`)
		case r == '\r':
			sb.WriteString(`\r`)
		case r == '\t':
			sb.WriteString(`\t`)
		case r < 0x20:
			sb.WriteString(`\u00`)
			sb.WriteByte("0123456789abcdef"[r>>4])
			sb.WriteByte("0123456789abcdef"[r&15])
		case r < 0x80:
			sb.WriteRune(r)
		case r < 0x10000:
			sb.WriteString(`\u` + hex4(int(r)))
		default:
			r -= 0x10000
			sb.WriteString(`\u` + hex4(0xd800+int(r>>10)) + `\u` + hex4(0xdc00+int(r&0x3ff)))
		}
	}
	sb.WriteByte('"')
	return sb.String()
}

func hex4(v int) string {
	s := strconv.FormatInt(int64(v), 16)
	for len(s) < 4 {
		s = "0" + s
	}
	return s
}

// sseEvent is one event with a JSON data line (same bytes shape as Python's json.dumps for flat objects).
func sseEvent(name string, data any) []byte {
	b, _ := json.Marshal(data)
	return []byte("event: " + name + "\ndata: " + string(b) + "\n\n")
}

func outputEvent(buf *bytes.Buffer, line string, ts int64, stream string) {
	buf.WriteString("event: output\ndata: {\"line\": ")
	buf.WriteString(jsonStr(line))
	buf.WriteString(", \"timestamp\": ")
	buf.WriteString(strconv.FormatInt(ts, 10))
	buf.WriteString(", \"stream\": \"")
	buf.WriteString(stream)
	buf.WriteString("\"}\n\n")
}

// cursor is where one stream stands in a buffer, and how many lines of each stream lie before it.
type cursor struct {
	buf          *outputBuffer
	streams      []int
	all          bool
	markerStream string
	seq          int
	seen         [2]int
}

func newCursor(buf *outputBuffer, streams []int) *cursor {
	c := &cursor{buf: buf, streams: streams, all: len(streams) == 2, markerStream: "stderr"}
	if len(streams) == 1 {
		c.markerStream = streamNames[streams[0]]
	}
	return c
}

// nextBatch writes the events of the next batch of lines (at most sseBatchLines), led by a marker for
// lines dropped before this stream could send them. Needs mu.
func (c *cursor) nextBatch(out *bytes.Buffer) {
	b := c.buf
	if c.seq < b.firstSeq() {
		skipped := 0
		for _, s := range c.streams {
			skipped += b.dropped[s] - c.seen[s]
		}
		c.seen = b.dropped
		c.seq = b.firstSeq()
		if skipped > 0 {
			outputEvent(out, markerText(skipped, b.limit), nowMs(), c.markerStream)
		}
	}
	end := b.nextSeq()
	if end > c.seq+sseBatchLines {
		end = c.seq + sseBatchLines
	}
	if c.seq < end {
		for _, it := range b.slice(c.seq, end) {
			c.seen[it.stream]++
			if c.all || it.stream == c.streams[0] {
				outputEvent(out, it.text, it.ts, streamNames[it.stream])
			}
		}
		c.seq = end
	}
}

// startSSE sends the head of an SSE answer; false for a HEAD request (the head is all it gets).
func startSSE(w http.ResponseWriter, r *http.Request) bool {
	h := w.Header()
	h.Set("Content-Type", "text/event-stream")
	h.Set("Cache-Control", "no-cache")
	w.WriteHeader(200)
	if r.Method == "HEAD" {
		return false
	}
	w.(http.Flusher).Flush()
	return true
}

// streamLines replays the buffer of `proc` from the start, then follows it until the entry is finished.
// Returns false when the client went away.
func streamLines(w http.ResponseWriter, r *http.Request, proc *Proc, streams []int) bool {
	fl := w.(http.Flusher)
	mu.Lock()
	cur := newCursor(proc.buffer, streams)
	mu.Unlock()
	var out bytes.Buffer
	timer := time.NewTimer(keepaliveInterval)
	defer timer.Stop()
	for {
		out.Reset()
		mu.Lock()
		buf := proc.buffer
		cur.nextBatch(&out)
		more := cur.seq < buf.nextSeq()
		closed := buf.closed
		changed := buf.changed
		mu.Unlock()
		if out.Len() > 0 {
			if _, err := w.Write(out.Bytes()); err != nil {
				return false
			}
			fl.Flush()
			continue
		}
		if more {
			continue
		}
		if closed {
			return true
		}
		if !timer.Stop() {
			select {
			case <-timer.C:
			default:
			}
		}
		timer.Reset(keepaliveInterval)
		select {
		case <-changed:
		case <-r.Context().Done():
			return false
		case <-timer.C:
			if _, err := w.Write([]byte(": keep-alive\n\n")); err != nil {
				return false
			}
			fl.Flush()
		}
	}
}
