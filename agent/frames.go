package main

// The frame protocol of upgraded connections (`Upgrade: tle-frames`), which the proxy maps to WebSocket
// messages, and the HTTP side of the upgrade (the 101 answer through http.Hijacker).
// Ported from emulator/agent/frame_protocol.py and frame_upgrade.py; PROTOCOL.md, "PTY" and "tunnels".

import (
	"bufio"
	"encoding/binary"
	"io"
	"net"
	"net/http"
	"strings"
	"sync"
	"time"
)

// A frame is 1 byte kind + 4 bytes big-endian payload length + payload; the proxy maps each one to one
// WebSocket message or close, both ways.
const (
	frameBinary     = 0 // one binary WebSocket message
	frameText       = 1 // one text WebSocket message (UTF-8)
	frameClose      = 2 // close: u16 big-endian code + UTF-8 reason
	frameHeadSize   = 5
	maxFrame        = 32 * 1024 * 1024 // bytes of payload; a longer frame ends the connection
	upgradeProtocol = "tle-frames"
	// how long a close frame may wait for a client that does not read before the connection is dropped
	frameCloseWait = 2 * time.Second
)

// FrameStream is the agent's end of an upgraded connection. Writes from several goroutines are
// serialized (one frame is never interleaved with another); reads belong to one goroutine.
type FrameStream struct {
	conn   net.Conn
	reader *bufio.Reader // the hijacked reader: it may already hold bytes the client sent after its head
	wmu    sync.Mutex
	mu     sync.Mutex
	closed bool
}

// ioWantsFrames tells whether the request asks for the frame protocol (`Upgrade: tle-frames` with
// `Connection: upgrade`), as frame_upgrade.wants_frames.
func ioWantsFrames(r *http.Request) bool {
	return strings.ToLower(strings.TrimSpace(r.Header.Get("Upgrade"))) == upgradeProtocol &&
		strings.Contains(strings.ToLower(strings.Join(r.Header.Values("Connection"), ", ")), "upgrade")
}

// ioRequireFrames answers 426 UPGRADE_REQUIRED for a plain request to an upgrade-only route.
func ioRequireFrames(r *http.Request) error {
	if !ioWantsFrames(r) {
		return newHttpError(426, "UPGRADE_REQUIRED", "this endpoint is a WebSocket: connect to it through the sandbox proxy")
	}
	return nil
}

// ioSwitchToFrames answers 101 and takes the connection over: from here on it carries frames. The
// caller closes the stream when its handler ends (Close, or Drop).
func ioSwitchToFrames(w http.ResponseWriter) (*FrameStream, error) {
	hj, ok := w.(http.Hijacker)
	if !ok {
		return nil, newHttpError(500, "INTERNAL", "connection cannot be upgraded")
	}
	conn, brw, err := hj.Hijack()
	if err != nil {
		return nil, err
	}
	_ = conn.SetDeadline(time.Time{}) // deadlines of the HTTP server do not apply to a long-lived stream
	head := "HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: " + upgradeProtocol + "\r\n\r\n"
	if _, err := io.WriteString(conn, head); err != nil {
		conn.Close()
		return nil, err
	}
	return &FrameStream{conn: conn, reader: brw.Reader}, nil
}

// Read returns the next frame; ok is false once the proxy went away (or sent an oversized frame).
func (s *FrameStream) Read() (kind byte, payload []byte, ok bool) {
	var head [frameHeadSize]byte
	if _, err := io.ReadFull(s.reader, head[:]); err != nil {
		s.markClosed()
		return 0, nil, false
	}
	n := binary.BigEndian.Uint32(head[1:])
	if n > maxFrame {
		s.markClosed()
		return 0, nil, false
	}
	payload = make([]byte, n)
	if _, err := io.ReadFull(s.reader, payload); err != nil {
		s.markClosed()
		return 0, nil, false
	}
	return head[0], payload, true
}

// Write sends one frame (header and payload in one writev); an error means the client is gone.
func (s *FrameStream) Write(kind byte, payload []byte) error {
	if s.isClosed() {
		return net.ErrClosed
	}
	return s.write(kind, payload)
}

func (s *FrameStream) write(kind byte, payload []byte) error {
	var head [frameHeadSize]byte
	head[0] = kind
	binary.BigEndian.PutUint32(head[1:], uint32(len(payload)))
	s.wmu.Lock()
	defer s.wmu.Unlock()
	bufs := net.Buffers{head[:], payload}
	_, err := bufs.WriteTo(s.conn)
	return err
}

// Close sends a close frame (code, reason of at most 120 bytes) unless the stream is closed already,
// and ends the connection; bytes written before are still delivered. A client that does not read gets
// frameCloseWait to take the frame.
func (s *FrameStream) Close(code uint16, reason string) {
	s.mu.Lock()
	already := s.closed
	s.closed = true
	s.mu.Unlock()
	if !already {
		if len(reason) > 120 {
			reason = reason[:120]
		}
		payload := make([]byte, 2, 2+len(reason))
		binary.BigEndian.PutUint16(payload, code)
		payload = append(payload, reason...)
		_ = s.conn.SetWriteDeadline(time.Now().Add(frameCloseWait)) // also frees a writer stuck on a full socket
		_ = s.write(frameClose, payload)
	}
	_ = s.conn.Close()
}

// Drop ends the connection without a close frame (the handler ends after the client went away).
func (s *FrameStream) Drop() {
	s.markClosed()
	_ = s.conn.Close()
}

func (s *FrameStream) markClosed() {
	s.mu.Lock()
	s.closed = true
	s.mu.Unlock()
}

func (s *FrameStream) isClosed() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.closed
}
