package main

import (
	"bytes"
	"encoding/json"
	"math"
	"net/http"
	"strconv"
	"strings"
)

// rejection is an answer the core gives itself, in the route's shape (errors.py): TGI's
// {"error","error_type"}, OpenAI's {"error":{"message","type","param","code"}} on /v1/*.
type rejection struct {
	status    int
	message   string
	errorType string
	reason    string // the rejections metric's label
	headers   map[string]string
}

func overloaded(retryAfter float64, reason string) *rejection {
	after := int(math.Ceil(retryAfter))
	if after < 1 {
		after = 1
	}
	return &rejection{429, "Model is overloaded", "overloaded", reason,
		map[string]string{"Retry-After": strconv.Itoa(after)}}
}

type openAIError struct {
	Message        string  `json:"message"`
	Type           string  `json:"type"`
	Param          *string `json:"param"`
	Code           string  `json:"code"`
	HTTPStatusCode int     `json:"http_status_code,omitempty"`
}

type tgiError struct {
	Error     string `json:"error"`
	ErrorType string `json:"error_type"`
}

func openAIType(status int) string {
	switch {
	case status >= 500:
		return "server_error"
	case status == 401:
		return "authentication_error"
	case status == 403:
		return "permission_error"
	case status == 429:
		return "rate_limit_error"
	}
	return "invalid_request_error"
}

func marshal(v any) []byte {
	var b bytes.Buffer
	enc := json.NewEncoder(&b)
	enc.SetEscapeHTML(false)
	_ = enc.Encode(v)
	return bytes.TrimRight(b.Bytes(), "\n")
}

func (r *rejection) payload(route string, inStream bool) []byte {
	if strings.HasPrefix(route, "/v1/") {
		e := openAIError{Message: r.message, Type: openAIType(r.status), Code: r.errorType}
		if inStream {
			e.HTTPStatusCode = r.status
		}
		return marshal(map[string]openAIError{"error": e})
	}
	return marshal(tgiError{r.message, r.errorType})
}

// write answers with the rejection (not yet counted: the caller's record counts it).
func (r *rejection) write(w http.ResponseWriter, route string, extra map[string]string) {
	h := w.Header()
	for k, v := range r.headers {
		setExact(h, k, v)
	}
	for k, v := range extra {
		setExact(h, k, v)
	}
	h.Set("Content-Type", "application/json; charset=utf-8")
	w.WriteHeader(r.status)
	_, _ = w.Write(r.payload(route, false))
}

// event is the rejection as a stream's last event (errors.error_event).
func (r *rejection) event(route string) []byte {
	if strings.HasPrefix(route, "/v1/") {
		return append(append([]byte("data: "), r.payload(route, true)...), "\n\ndata: [DONE]\n\n"...)
	}
	return append(append([]byte("data:"), r.payload(route, false)...), "\n\n"...)
}

var upstreamTypes = map[int]string{400: "bad_request", 401: "authentication", 413: "bad_request",
	415: "bad_request", 422: "validation"}

// refusal is a backend's error answer, to be given in the route's shape (proxy._refusal).
func refusal(status int, payload []byte) *rejection {
	errType, ok := upstreamTypes[status]
	if !ok {
		errType = "upstream"
	}
	var body map[string]any
	if json.Unmarshal(payload, &body) == nil && body != nil {
		if inner, ok := body["error"].(map[string]any); ok { // OpenAI-shaped already
			body = map[string]any{"error": inner["message"], "error_type": inner["code"]}
		}
		if e, ok := body["error"]; ok && e != nil {
			if t, ok := body["error_type"]; ok && t != nil && t != "" {
				errType = pyStr(t)
			}
			return &rejection{status, pyStr(e), errType, "upstream", nil}
		}
	}
	text := strings.ToValidUTF8(string(payload), "\uFFFD")
	if r := []rune(text); len(r) > 500 {
		text = string(r[:500])
	}
	if text == "" {
		text = http.StatusText(status)
	}
	return &rejection{status, text, errType, "upstream", nil}
}

// pyStr is Python's str() for the JSON values an error field may hold.
func pyStr(v any) string {
	switch x := v.(type) {
	case string:
		return x
	case bool:
		if x {
			return "True"
		}
		return "False"
	case float64:
		if x == math.Trunc(x) && math.Abs(x) < 1e15 {
			return strconv.FormatInt(int64(x), 10)
		}
		return strconv.FormatFloat(x, 'g', -1, 64)
	}
	return string(marshal(v))
}

// setExact sets a header under its name as the Python gateway spells it (X-TGIPool-Pool, not Go's
// canonical X-Tgipool-Pool): names are case-insensitive, but clients that copy headers into a plain
// dict look them up by that spelling.
func setExact(h http.Header, name, value string) {
	h.Del(name)
	delete(h, name)
	h[name] = []string{value}
}
