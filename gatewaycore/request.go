package main

import (
	"bytes"
	"encoding/json"
	"net/http"
	"strconv"
	"strings"
	"unicode/utf8"
)

const (
	maxBodyBytes = 4 * 1024 * 1024 // app.MAX_BODY_BYTES
	maxDepth     = 128             // serde_json's recursion limit (strict_json.MAX_DEPTH)
	u32          = 1<<32 - 1
	u64          = 1<<64 - 1
)

// parsed is what routing needs from a generation request (parsing.ParsedRequest).
type parsed struct {
	route    string
	model    *string // nil: absent or null
	modelSet bool    // the body's `model` field is a string
	texts    []string
	maxNew   *int
	object   map[string]json.RawMessage // the decoded body, for a rewrite of `model`
}

// Routes the core serves; every other request goes to Python.
func generationRoute(path string) bool {
	switch path {
	case "/v1/chat/completions", "/v1/completions", "/generate", "/generate_stream":
		return true
	}
	return false
}

// plainJSON: the body is JSON that Go and serde_json (strict_json) read alike: UTF-8, at most 128 levels
// deep, no surrogate escapes, no exponents (serde refuses what overflows f64). Anything else goes to
// Python, which answers with serde_json's message.
func plainJSON(body []byte) bool {
	if !utf8.Valid(body) || bytes.Contains(body, []byte(`\ud`)) || bytes.Contains(body, []byte(`\uD`)) {
		return false
	}
	depth, inString, escaped, inNumber := 0, false, false, false
	for _, c := range body {
		if inNumber {
			switch {
			case c == 'e' || c == 'E':
				return false
			case c >= '0' && c <= '9' || c == '.' || c == '-' || c == '+':
				continue
			}
			inNumber = false
		}
		if inString {
			switch {
			case escaped:
				escaped = false
			case c == '\\':
				escaped = true
			case c == '"':
				inString = false
			}
			continue
		}
		switch c {
		case '"':
			inString = true
		case '{', '[':
			depth++
			if depth > maxDepth {
				return false
			}
		case '}', ']':
			depth--
		case '-', '0', '1', '2', '3', '4', '5', '6', '7', '8', '9':
			inNumber = true
		}
	}
	return true
}

// uint reads an optional unsigned integer with TGI's type; ok=false when TGI would refuse it (Python's 422).
func uintField(raw json.RawMessage, high uint64) (*int, bool) {
	if raw == nil || string(raw) == "null" {
		return nil, true
	}
	for _, c := range raw {
		if c < '0' || c > '9' {
			return nil, false
		}
	}
	v, err := strconv.ParseUint(string(raw), 10, 64)
	if err != nil || v > high || v > 1<<62 {
		return nil, false
	}
	n := int(v)
	return &n, true
}

func stringField(raw json.RawMessage) (*string, bool) {
	if raw == nil || string(raw) == "null" {
		return nil, true
	}
	var s string
	if raw[0] != '"' || json.Unmarshal(raw, &s) != nil {
		return nil, false
	}
	return &s, true
}

// parseRequest is parsing.parse_request for a body Python would accept; ok=false sends it to Python.
func parseRequest(route string, body []byte, header http.Header) (*parsed, bool) {
	if !plainJSON(body) {
		return nil, false
	}
	var obj map[string]json.RawMessage
	if json.Unmarshal(body, &obj) != nil || obj == nil {
		return nil, false
	}
	p := &parsed{route: route, object: obj}
	if strings.HasPrefix(route, "/v1/") {
		model, ok := stringField(obj["model"])
		if !ok {
			return nil, false
		}
		p.modelSet = model != nil
		if h := header.Values("X-Model"); model == nil && len(h) > 0 {
			m := h[0]
			model = &m
		}
		p.model = model
	} else if h := header.Values("X-Model"); len(h) > 0 {
		m := h[0]
		p.model = &m
	}
	var ok bool
	switch route {
	case "/v1/chat/completions":
		var mct, mt *int
		if mct, ok = uintField(obj["max_completion_tokens"], u32); !ok {
			return nil, false
		}
		if mt, ok = uintField(obj["max_tokens"], u32); !ok {
			return nil, false
		}
		if _, ok = uintField(obj["n"], u32); !ok {
			return nil, false
		}
		p.maxNew = mct
		if mct == nil {
			p.maxNew = mt
		}
		p.texts = []string{chatText(obj["messages"])}
	case "/v1/completions":
		if p.maxNew, ok = uintField(obj["max_tokens"], u32); !ok {
			return nil, false
		}
		for _, f := range []string{"n", "best_of"} {
			if _, ok = uintField(obj[f], u32); !ok {
				return nil, false
			}
		}
		p.texts = promptTexts(obj["prompt"])
	default: // TGI's routes
		var params map[string]json.RawMessage
		if raw := obj["parameters"]; raw != nil && raw[0] == '{' {
			if json.Unmarshal(raw, &params) != nil {
				return nil, false
			}
		}
		if p.maxNew, ok = uintField(params["max_new_tokens"], u32); !ok {
			return nil, false
		}
		if _, ok = uintField(params["best_of"], u64); !ok {
			return nil, false
		}
		var text string
		if raw := obj["inputs"]; raw != nil && raw[0] == '"' {
			_ = json.Unmarshal(raw, &text)
		}
		p.texts = []string{text}
	}
	return p, true
}

// chatText is tokens.chat_text: the message contents joined with newlines.
func chatText(raw json.RawMessage) string {
	var msgs []json.RawMessage
	if raw == nil || raw[0] != '[' || json.Unmarshal(raw, &msgs) != nil {
		return ""
	}
	parts := make([]string, 0, len(msgs))
	for _, m := range msgs {
		if len(m) == 0 || m[0] != '{' {
			continue
		}
		var msg struct {
			Content json.RawMessage `json:"content"`
		}
		if json.Unmarshal(m, &msg) != nil || msg.Content == nil {
			continue
		}
		switch msg.Content[0] {
		case '"':
			var s string
			if json.Unmarshal(msg.Content, &s) == nil {
				parts = append(parts, s)
			}
		case '[':
			var items []json.RawMessage
			if json.Unmarshal(msg.Content, &items) != nil {
				continue
			}
			for _, it := range items {
				if len(it) == 0 || it[0] != '{' {
					continue
				}
				var part struct {
					Text json.RawMessage `json:"text"`
				}
				if json.Unmarshal(it, &part) == nil && part.Text != nil && part.Text[0] == '"' {
					var s string
					if json.Unmarshal(part.Text, &s) == nil {
						parts = append(parts, s)
					}
				}
			}
		}
	}
	return strings.Join(parts, "\n")
}

// promptTexts: a prompt string, or the strings of a list of prompts; [""] without one.
func promptTexts(raw json.RawMessage) []string {
	if raw != nil && raw[0] == '"' {
		var s string
		if json.Unmarshal(raw, &s) == nil {
			return []string{s}
		}
	}
	var texts []string
	if raw != nil && raw[0] == '[' {
		var items []json.RawMessage
		if json.Unmarshal(raw, &items) == nil {
			for _, it := range items {
				var s string
				if len(it) > 0 && it[0] == '"' && json.Unmarshal(it, &s) == nil {
					texts = append(texts, s)
				}
			}
		}
	}
	if len(texts) == 0 {
		return []string{""}
	}
	return texts
}

// environment is parsing.environment without tenants; ok=false for a value Python refuses (400).
func environment(header http.Header) (string, bool) {
	raw := header.Values("X-TGIPool-Environment")
	if len(raw) == 0 {
		return "prod", true
	}
	env := strings.ToLower(strings.TrimSpace(raw[0]))
	return env, env == "prod" || env == "staging"
}

// priority is parsing.priority without tenants; ok=false when Python would read the header otherwise.
func priority(header http.Header) (int, bool) {
	raw := header.Values("X-Priority")
	if len(raw) == 0 {
		return 0, true
	}
	v, err := strconv.Atoi(strings.TrimSpace(raw[0]))
	return v, err == nil
}
