package main

import (
	"bytes"
	"net/http"
	"strconv"
	"strings"
)

// net/http answers a request it cannot parse itself, before any handler, by writing a canned plain-text
// answer straight to the connection (server.go, (*conn).serve): 400, 431, 501 for a Transfer-Encoding it
// does not know and 505 for a protocol version; and 417 for an Expect other than 100-continue. There is
// no hook for them, so the connection's Write turns them into the gateway's own answer as Python gives
// it (http_server.py): TGI's error shape, and never a 5xx for what the client sent.
//
// The canned head is the status line followed at once by exactly these headers; an answer of a handler
// always carries its headers in another order, with a Date, so nothing else matches.
const cannedHeaders = "\r\nContent-Type: text/plain; charset=utf-8\r\nConnection: close\r\n\r\n"

const expectFailed = "HTTP/1.1 417 Expectation Failed\r\nConnection: close\r\nDate: "

// Write is the connection's, with net/http's canned answers rewritten.
func (c *arrivalConn) Write(b []byte) (int, error) {
	if out := rewriteCanned(b, c.openai.Load()); out != nil {
		if _, err := c.Conn.Write(out); err != nil {
			return 0, err
		}
		return len(b), nil
	}
	return c.Conn.Write(b)
}

// noteRoute notes whether a request line that starts a read (a new request's head) names an OpenAI
// route: net/http's 417 comes after the head was parsed, and Python answers it in the route's shape.
func (c *arrivalConn) noteRoute(b []byte) {
	line, _, ok := bytes.Cut(b, []byte("\r\n"))
	if !ok {
		return
	}
	_, rest, ok := bytes.Cut(line, []byte(" "))
	if ok && bytes.HasPrefix(rest, []byte("/")) {
		c.openai.Store(bytes.HasPrefix(rest, []byte("/v1/")))
	}
}

// rewriteCanned is the gateway's answer for one of net/http's canned ones; nil for any other bytes. A
// parser's refusal takes TGI's shape, as Python's (its route is unknown); the 417 takes the route's
// (`openai`: the request line named a /v1/ route).
func rewriteCanned(b []byte, openai bool) []byte {
	if !bytes.HasPrefix(b, []byte("HTTP/1.1 ")) {
		return nil
	}
	if bytes.HasPrefix(b, []byte(expectFailed)) && bytes.HasSuffix(b, []byte("\r\nContent-Length: 0\r\n\r\n")) {
		route := ""
		if openai {
			route = "/v1/"
		}
		return cannedAnswer(417, "Unsupported Expect header: only 100-continue is supported", route)
	}
	// Only the status line is scanned: the canned headers come right after it, or this is not one.
	end := bytes.Index(b, []byte("\r\n"))
	if end < len("HTTP/1.1 400") || !bytes.HasPrefix(b[end:], []byte(cannedHeaders)) {
		return nil
	}
	text := b[end+len(cannedHeaders):]
	code, err := strconv.Atoi(string(b[9:12]))
	if err != nil {
		return nil
	}
	// The canned text is the status, then ": reason" for some (net/http's own words, never the
	// client's bytes): "400 Bad Request: malformed Host header".
	_, reason, _ := strings.Cut(string(text), ": ")
	switch code {
	case 431:
		return cannedAnswer(431, "Request header fields too large", "")
	case 501:
		return cannedAnswer(400, "Bad request: invalid Transfer-Encoding", "")
	case 505:
		return cannedAnswer(400, "Bad request: unsupported protocol version", "")
	}
	if code < 400 || code >= 500 {
		code = 400
	}
	if reason == "" {
		reason = "malformed HTTP request"
	}
	return cannedAnswer(code, "Bad request: "+reason, "")
}

func cannedAnswer(status int, message, route string) []byte {
	body := (&rejection{status: status, message: message, errorType: "bad_request"}).payload(route, false)
	var b bytes.Buffer
	b.WriteString("HTTP/1.1 " + strconv.Itoa(status) + " " + http.StatusText(status) + "\r\n")
	b.WriteString("Content-Type: application/json\r\nContent-Length: " + strconv.Itoa(len(body)) + "\r\n")
	b.WriteString("Connection: close\r\n\r\n")
	b.Write(body)
	return b.Bytes()
}
