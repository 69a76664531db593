package main

// The agent's error answers, ported from emulator/agent/errors.py: every failure a handler reports is an
// HttpError, answered as {"error": message, "code": code} with its status (PROTOCOL.md, errors).

import (
	"encoding/json"
	"fmt"
	"net/http"
	"strconv"
	"strings"
)

// HttpError is an answer of an error: HTTP status, machine code (e.g. "NOT_FOUND") and a message.
type HttpError struct {
	Status  int
	Code    string
	Message string
}

func (e *HttpError) Error() string { return e.Message }

// newHttpError builds an HttpError; the message is made valid UTF-8 (undecodable file names become U+FFFD),
// as errors.clean_text does, so strict JSON parsers accept it.
func newHttpError(status int, code, message string) *HttpError {
	return &HttpError{Status: status, Code: code, Message: strings.ToValidUTF8(message, "\uFFFD")}
}

// badRequest is the 400 BAD_REQUEST of invalid input.
func badRequest(format string, a ...any) *HttpError {
	return newHttpError(400, "BAD_REQUEST", fmt.Sprintf(format, a...))
}

// writeJSON answers with `body` as JSON and an explicit Content-Length (so a HEAD gets the length a GET
// would). 204 gets neither body nor length (http_connection.send).
func writeJSON(w http.ResponseWriter, status int, body any) {
	if status == http.StatusNoContent {
		w.WriteHeader(status)
		return
	}
	data, err := json.Marshal(body)
	if err != nil {
		status = 500
		data = []byte(`{"error":"internal agent error: unencodable answer","code":"INTERNAL"}`)
	}
	h := w.Header()
	h.Set("Content-Type", "application/json")
	h.Set("Content-Length", strconv.Itoa(len(data)))
	w.WriteHeader(status)
	_, _ = w.Write(data)
}

// writeError answers err: an *HttpError with its status and code, anything else as 500 INTERNAL.
func writeError(w http.ResponseWriter, err error) {
	he, ok := err.(*HttpError)
	if !ok {
		logf("internal error: %v", err)
		he = newHttpError(500, "INTERNAL", "internal agent error: "+err.Error())
	}
	writeJSON(w, he.Status, map[string]string{"error": he.Message, "code": he.Code})
}
