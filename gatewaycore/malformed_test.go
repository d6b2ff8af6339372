package main

import (
	"encoding/json"
	"io"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strings"
	"testing"
)

// A request net/http refuses before any handler gets the gateway's answer, as Python gives it: TGI's
// error shape, a 4xx, the connection closed; and the client's bytes are not echoed.
func TestRequestsNetHTTPCannotParseGetTheGatewaysAnswer(t *testing.T) {
	f := newFakePython(t, snapshot(tgiPool("short", 1000, 2000, "http://127.0.0.1:9")))
	u, _ := url.Parse(f.srv.URL)
	c := NewCore(u)
	srv := httptest.NewUnstartedServer(c)
	srv.Listener = arrivalListener{srv.Listener} // as main.go serves it
	srv.Start()
	t.Cleanup(srv.Close)
	cases := []struct {
		name, request string
		status        int
		message       string
	}{
		{"a request line that is not one", "GARBAGE\r\n\r\n", 400, "Bad request: malformed HTTP request"},
		{"a header line without a colon", "POST /generate HTTP/1.1\r\nHost: x\r\nsecret-key-abc\r\n\r\n", 400,
			"Bad request: malformed HTTP request"},
		{"a header name that is not a token", "GET /health HTTP/1.1\r\nHost: x\r\nBad Name: v\r\n\r\n", 400,
			"Bad request: invalid header name"},
		{"no Host", "GET /health HTTP/1.1\r\n\r\n", 400, "Bad request: missing required Host header"},
		{"a Content-Length that is not a number", "POST /generate HTTP/1.1\r\nHost: x\r\nContent-Length: abc\r\n\r\n",
			400, "Bad request: malformed HTTP request"},
		{"a Transfer-Encoding Go does not know (501 from Go itself)",
			"POST /generate HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: secret-key-abc\r\n\r\n", 400,
			"Bad request: invalid Transfer-Encoding"},
		{"a protocol version (505 from Go itself)", "GET /health HTTP/2.0\r\nHost: x\r\n\r\n", 400,
			"Bad request: unsupported protocol version"},
		{"headers over 1 MB", "GET /health HTTP/1.1\r\nHost: x\r\nX-A: " + strings.Repeat("a", 1<<21) + "\r\n\r\n",
			431, "Request header fields too large"},
		{"an Expect other than 100-continue",
			"POST /generate HTTP/1.1\r\nHost: x\r\nExpect: secret-key-abc\r\nContent-Length: 2\r\n\r\n{}", 417,
			"Unsupported Expect header: only 100-continue is supported"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			resp, raw := rawExchange(t, srv.URL, tc.request)
			var body struct {
				Error     string `json:"error"`
				ErrorType string `json:"error_type"`
			}
			if err := json.Unmarshal(raw, &body); err != nil {
				t.Fatalf("%d %q: not JSON: %v", resp.StatusCode, raw, err)
			}
			if resp.StatusCode != tc.status || body.Error != tc.message || body.ErrorType != "bad_request" {
				t.Errorf("got %d %q, want %d %q", resp.StatusCode, raw, tc.status, tc.message)
			}
			if resp.Header.Get("Content-Type") != "application/json" || !resp.Close {
				t.Errorf("headers %v, close %v", resp.Header, resp.Close)
			}
			if strings.Contains(string(raw), "secret-key-abc") {
				t.Errorf("the client's bytes came back: %s", raw)
			}
		})
	}
}

// The 417 comes after net/http parsed the head: like Python's, it takes the route's shape.
func TestAn417OnAnOpenAIRouteTakesItsShape(t *testing.T) {
	srv := httptest.NewUnstartedServer(http.NotFoundHandler())
	srv.Listener = arrivalListener{srv.Listener}
	srv.Start()
	t.Cleanup(srv.Close)
	resp, raw := rawExchange(t, srv.URL, "POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nExpect: nope\r\n"+
		"Content-Length: 2\r\n\r\n{}")
	var body struct {
		Error struct{ Message, Type, Code string } `json:"error"`
	}
	if err := json.Unmarshal(raw, &body); err != nil || resp.StatusCode != 417 ||
		body.Error.Code != "bad_request" || body.Error.Type != "invalid_request_error" ||
		!strings.HasPrefix(body.Error.Message, "Unsupported Expect header") {
		t.Errorf("%d %s (%v)", resp.StatusCode, raw, err)
	}
}

// Only net/http's canned answers are rewritten: an answer of a handler with the same status and
// content type passes as it is.
func TestAHandlersOwnAnswerIsNotRewritten(t *testing.T) {
	srv := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "text/plain; charset=utf-8")
		w.Header().Set("Connection", "close")
		w.WriteHeader(400)
		_, _ = io.WriteString(w, "400 Bad Request")
	}))
	srv.Listener = arrivalListener{srv.Listener}
	srv.Start()
	t.Cleanup(srv.Close)
	resp, err := http.Get(srv.URL + "/x")
	if err != nil {
		t.Fatal(err)
	}
	raw, _ := io.ReadAll(resp.Body)
	_ = resp.Body.Close()
	if resp.StatusCode != 400 || string(raw) != "400 Bad Request" || resp.Header.Get("Date") == "" {
		t.Errorf("%d %q %v", resp.StatusCode, raw, resp.Header)
	}
	if rewriteCanned([]byte("HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n"), false) != nil {
		t.Error("a plain answer was rewritten")
	}
}
