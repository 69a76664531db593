package main

// Request bodies (http_request.Body.read_all): read whole up to a limit; a bigger one is 413.

import (
	"fmt"
	"io"
	"net/http"
)

const maxJSONBody = 16 * 1024 * 1024

// readBody reads r's body whole. Errors: 413 PAYLOAD_TOO_LARGE past `limit` bytes, 400 BAD_REQUEST for a
// body that cannot be read (a broken chunked framing; the connection is then closed by net/http).
func readBody(r *http.Request, limit int64) ([]byte, error) {
	data, err := io.ReadAll(io.LimitReader(r.Body, limit+1))
	if err != nil {
		return nil, badRequest("malformed request body")
	}
	if int64(len(data)) > limit {
		return nil, newHttpError(413, "PAYLOAD_TOO_LARGE", fmt.Sprintf("request body larger than %d bytes", limit))
	}
	return data, nil
}
