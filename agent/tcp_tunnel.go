package main

// TCP tunnels (GET /api/v1/tunnels/tcp?port=N, upgraded): a connection to a port inside the sandbox,
// relayed verbatim both ways as binary frames. Ported from emulator/agent/tcp_tunnel.py; PROTOCOL.md,
// "Tunnels".

import (
	"errors"
	"io"
	"net"
	"net/http"
	"os"
	"strconv"
	"strings"
	"syscall"
	"time"
)

const (
	tunnelConnectTimeout = 5 * time.Second
	tunnelRead           = 64 * 1024 // bytes per frame towards the client
)

func init() {
	extraRoutes = append(extraRoutes, Route{Method: "GET", Pattern: "tunnels/tcp", Handler: ioTunnel, Upgrade: true})
}

// ioOpenLocalPort connects to `port` inside the sandbox: IPv4 loopback, then IPv6. The error is the
// IPv4 one unless that one timed out.
func ioOpenLocalPort(port int) (net.Conn, error) {
	p := strconv.Itoa(port)
	c, first := net.DialTimeout("tcp", "127.0.0.1:"+p, tunnelConnectTimeout)
	if first == nil {
		return c, nil
	}
	if c, err := net.DialTimeout("tcp", "[::1]:"+p, tunnelConnectTimeout); err == nil {
		return c, nil
	}
	return nil, first
}

// ioConnectReason is the errno text of a failed connect ("Connection refused"), as Python's strerror.
func ioConnectReason(err error) string {
	var errno syscall.Errno
	if errors.As(err, &errno) {
		return ioStrerror(errno)
	}
	if errors.Is(err, os.ErrDeadlineExceeded) || strings.Contains(err.Error(), "timeout") {
		return "connection timed out"
	}
	return err.Error()
}

// ioTunnel answers GET /api/v1/tunnels/tcp?port=N: 400 for a bad port, 426 without the upgrade, 502
// TUNNEL_CONNECT_FAILED when nothing takes the connection, else 101 and the relay.
func ioTunnel(w http.ResponseWriter, r *http.Request, _ Params) {
	raw, _ := ioQueryParam(r, "port")
	port, err := strconv.Atoi(strings.TrimSpace(raw))
	if err != nil || port <= 0 || port > 65535 {
		writeError(w, newHttpError(400, "BAD_REQUEST", "query parameter `port` must be an integer in 1..65535"))
		return
	}
	if err := ioRequireFrames(r); err != nil {
		writeError(w, err)
		return
	}
	peer, err := ioOpenLocalPort(port)
	if err != nil {
		writeError(w, newHttpError(502, "TUNNEL_CONNECT_FAILED",
			"cannot connect to port "+strconv.Itoa(port)+" inside the sandbox: "+ioConnectReason(err)))
		return
	}
	stream, err := ioSwitchToFrames(w)
	if err != nil {
		peer.Close()
		return
	}
	ioRelayTunnel(stream, peer)
}

// ioRelayTunnel moves bytes both ways until either side closes. When the in-sandbox peer closed, the
// client gets close 1000 (1011 "connection reset in the sandbox" if it failed); when the client went
// away, the peer's connection is closed.
func ioRelayTunnel(stream *FrameStream, peer net.Conn) {
	upDone := make(chan error, 1)
	downDone := make(chan struct{})
	go func() { // sandbox -> client
		buf := make([]byte, tunnelRead)
		for {
			n, err := peer.Read(buf)
			if n > 0 {
				if werr := stream.Write(frameBinary, buf[:n]); werr != nil {
					upDone <- nil // the client is gone: the other direction ends too
					return
				}
			}
			if err != nil {
				if err == io.EOF {
					err = nil
				}
				upDone <- err
				return
			}
		}
	}()
	go func() { // client -> sandbox
		defer close(downDone)
		for {
			kind, payload, ok := stream.Read()
			if !ok || kind == frameClose {
				return
			}
			if len(payload) > 0 {
				if _, err := peer.Write(payload); err != nil {
					return
				}
			}
		}
	}()
	select {
	case err := <-upDone:
		if err != nil {
			stream.Close(1011, "connection reset in the sandbox")
		} else {
			stream.Close(1000, "")
		}
		peer.Close()
		<-downDone
	case <-downDone:
		peer.Close()
		<-upDone
		stream.Close(1000, "")
	}
}
