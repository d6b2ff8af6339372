package main

import (
	"bufio"
	"context"
	"encoding/json"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strings"
	"sync"
	"testing"
	"time"
)

// fakePython is the Python gateway's side of the protocol on loopback: snapshots, reports, handoffs.
type fakePython struct {
	mu       sync.Mutex
	snap     *Snapshot
	reports  []Report
	handoffs []string // "METHOD PATH BODY"
	srv      *httptest.Server
}

func newFakePython(t *testing.T, s *Snapshot) *fakePython {
	f := &fakePython{snap: s}
	f.srv = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		switch r.URL.Path {
		case "/internal/core/snapshot":
			f.mu.Lock()
			s := f.snap
			f.mu.Unlock()
			after := r.URL.Query().Get("after")
			if after == itoaTest(s.Version) {
				time.Sleep(50 * time.Millisecond)
				w.WriteHeader(http.StatusNoContent)
				return
			}
			_ = json.NewEncoder(w).Encode(s)
		case "/internal/core/report":
			var rep Report
			if err := json.NewDecoder(r.Body).Decode(&rep); err != nil {
				t.Errorf("report: %v", err)
			}
			f.mu.Lock()
			f.reports = append(f.reports, rep)
			f.mu.Unlock()
			w.WriteHeader(http.StatusNoContent)
		default:
			b, _ := io.ReadAll(r.Body)
			f.mu.Lock()
			f.handoffs = append(f.handoffs, r.Method+" "+r.URL.Path+" "+string(b))
			f.mu.Unlock()
			w.Header().Set("X-Python", "yes")
			w.WriteHeader(404)
			_, _ = w.Write([]byte(`{"error":"from python"}`))
		}
	}))
	t.Cleanup(f.srv.Close)
	return f
}

func itoaTest(n int64) string { b, _ := json.Marshal(n); return string(b) }

func (f *fakePython) handed() []string {
	f.mu.Lock()
	defer f.mu.Unlock()
	return append([]string(nil), f.handoffs...)
}

// merged sums the reports received so far.
func (f *fakePython) merged() (requests map[string]int64, rejections, routed map[string]int64,
	hists map[string]int64, retries map[string]int64, active map[string]bool) {
	f.mu.Lock()
	defer f.mu.Unlock()
	requests, rejections, routed = map[string]int64{}, map[string]int64{}, map[string]int64{}
	hists, retries, active = map[string]int64{}, map[string]int64{}, map[string]bool{}
	for _, r := range f.reports {
		for _, c := range r.Requests {
			requests[c.Route+" "+itoaTest(int64(c.Code))] += c.N
		}
		for k, n := range r.Rejections {
			rejections[k] += n
		}
		for k, n := range r.Routed {
			routed[k] += n
		}
		for name, byPool := range r.Histograms {
			for pool, h := range byPool {
				for _, n := range h.Buckets {
					hists[name+" "+pool] += n
				}
			}
		}
		for _, c := range r.Retries {
			retries[c.Pool+" "+c.Reason] += c.N
		}
		for _, p := range r.Active {
			active[p] = true
		}
	}
	return
}

func snapshot(pools ...PoolConfig) *Snapshot {
	b := []float64{0.001, 0.01, 0.1, 1, 10}
	return &Snapshot{Version: 1, QueueTimeoutSeconds: 5, MaxQueueLength: 100, ConnectTimeout: 1,
		ResponseTimeout: 10, StreamIdleTimeout: 10, ClientTimeout: 10,
		Buckets: map[string][]float64{hQueueWait: b, hUpstream: b, hTTFT: b, hRequest: b, hAdded: b},
		Pools:   pools}
}

func tgiPool(name string, input, total int, urls ...string) PoolConfig {
	p := PoolConfig{Name: name, Model: "llama", Environment: "prod", InputLimit: input, TotalLimit: total,
		Overload: "queue", Engine: "tgi", TGIAPI: true, UpstreamModel: "tgi"}
	for i, u := range urls {
		p.Endpoints = append(p.Endpoints, EndpointConfig{URL: u, ID: "ep-" + name + itoaTest(int64(i)), Limit: 128})
	}
	return p
}

// startCore runs the core against fake Python and waits for its first snapshot.
func startCore(t *testing.T, f *fakePython) (*Core, string) {
	u, _ := url.Parse(f.srv.URL)
	c := NewCore(u)
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(cancel)
	client := &http.Client{Timeout: 5 * time.Second}
	go c.Follow(ctx, client, f.srv.URL+"/internal/core/snapshot")
	go c.metrics.Report(ctx, client, f.srv.URL+"/internal/core/report", 50*time.Millisecond)
	srv := httptest.NewServer(c)
	t.Cleanup(srv.Close)
	deadline := time.Now().Add(5 * time.Second)
	for c.table.Snapshot() == nil {
		if time.Now().After(deadline) {
			t.Fatal("no snapshot within 5 s")
		}
		time.Sleep(10 * time.Millisecond)
	}
	return c, srv.URL
}

// seen is what an emulated upstream received.
type seen struct {
	mu      sync.Mutex
	bodies  []map[string]any
	headers []http.Header
}

func upstream(t *testing.T, s *seen, handle func(w http.ResponseWriter, r *http.Request)) string {
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		var body map[string]any
		_ = json.NewDecoder(r.Body).Decode(&body)
		s.mu.Lock()
		s.bodies = append(s.bodies, body)
		s.headers = append(s.headers, r.Header.Clone())
		s.mu.Unlock()
		if handle != nil {
			handle(w, r)
			return
		}
		w.Header().Set("Content-Type", "application/json")
		_, _ = w.Write([]byte(`{"choices":[{"message":{"content":"hi"}}]}`))
	}))
	t.Cleanup(srv.Close)
	return srv.URL
}

func post(t *testing.T, u, path, body string, headers ...string) (*http.Response, string) {
	req, _ := http.NewRequest(http.MethodPost, u+path, strings.NewReader(body))
	req.Header.Set("Content-Type", "application/json")
	for i := 0; i+1 < len(headers); i += 2 {
		req.Header.Set(headers[i], headers[i+1])
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	b, _ := io.ReadAll(resp.Body)
	_ = resp.Body.Close()
	return resp, string(b)
}

func waitFor(t *testing.T, what string, ok func() bool) {
	deadline := time.Now().Add(5 * time.Second)
	for !ok() {
		if time.Now().After(deadline) {
			t.Fatalf("not within 5 s: %s", what)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func TestApproxTokensExamples(t *testing.T) {
	cases := map[string]int{
		"":                     0,
		"Hello, tokenization!": 7, // Hell o , ␣toke niza tion !
		"   ":                  1,
		"ab  12":               3, // ab ␣␣1 2
		"snake_case":           4, // snak e _ case
		"Привет мир":           3, // Прив ет ␣мир
		"x\u00a0y ":            3, // x, ␣y, trailing space
	}
	for text, want := range cases {
		if got := approxTokens(text); got != want {
			t.Errorf("approxTokens(%q) = %d, want %d", text, got, want)
		}
	}
}

func TestChooseSmallestThatFitsElseWidestThatAccepts(t *testing.T) {
	short := &Pool{PoolConfig: tgiPool("short", 1000, 2000)}
	long := &Pool{PoolConfig: tgiPool("long", 7000, 8000)}
	pools := []*Pool{long, short}
	m := func(n int) *int { return &n }
	if got := choose(pools, 500, m(100)); got != short {
		t.Errorf("a short request went to %v", got.Name)
	}
	if got := choose(pools, 1500, m(100)); got != long {
		t.Errorf("a long request went to %v", got.Name)
	}
	if got := choose(pools, 6000, m(4000)); got != long { // fits nowhere whole; TGI accepts 1024 at a time
		t.Errorf("a request TGI accepts in chunks went to %v", got)
	}
	if got := choose(pools, 7500, nil); got != nil {
		t.Errorf("a request over every input limit was routed to %v", got.Name)
	}
}

func TestServesTheRequestItselfWithTheModelAsTGIKnowsIt(t *testing.T) {
	var s seen
	up := upstream(t, &s, nil)
	f := newFakePython(t, snapshot(tgiPool("short", 1000, 2000, up), tgiPool("long", 7000, 8000,
		upstream(t, &seen{}, nil))))
	_, u := startCore(t, f)
	resp, body := post(t, u, "/v1/chat/completions",
		`{"model":"llama","messages":[{"role":"user","content":"hello"}],"max_tokens":10}`,
		"Authorization", "Bearer secret", "X-Priority", "3", "X-Trace", "abc")
	if resp.StatusCode != 200 || !strings.Contains(body, `"hi"`) {
		t.Fatalf("status %d body %s", resp.StatusCode, body)
	}
	if resp.Header.Get(poolHeader) != "short" || resp.Header.Get(endpointHeader) != "ep-short0" {
		t.Errorf("pool/endpoint headers: %v", resp.Header)
	}
	if len(f.handed()) != 0 {
		t.Errorf("handed to Python: %v", f.handed())
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.bodies[0]["model"] != "tgi" || s.bodies[0]["max_tokens"] != float64(10) {
		t.Errorf("upstream body: %v", s.bodies[0])
	}
	h := s.headers[0]
	if h.Get("Authorization") != "" || h.Get("X-Priority") != "" || h.Get("X-Trace") != "abc" {
		t.Errorf("upstream headers: %v", h)
	}
}

func TestHandsPythonWhatItDoesNotServe(t *testing.T) {
	var s seen
	up := upstream(t, &s, nil)
	hf := "tok.json"
	withTokenizer := tgiPool("code", 1000, 2000, up)
	withTokenizer.Model, withTokenizer.Tokenizer = "coder", &hf
	resting := tgiPool("cold", 1000, 2000)
	resting.Model, resting.Hold = "sleepy", true
	f := newFakePython(t, snapshot(tgiPool("short", 1000, 2000, up), withTokenizer, resting))
	_, u := startCore(t, f)
	cases := []struct{ path, body string }{
		{"/v1/chat/completions", `{"model":"nope","messages":[]}`},                                // unknown model: Python's 404
		{"/v1/chat/completions", `{"model":"coder","messages":[]}`},                               // a tokenizer file
		{"/v1/chat/completions", `{"model":"sleepy","messages":[]}`},                              // a resting pool: Python holds
		{"/v1/chat/completions", `{"model":"llama","max_tokens":1e3}`},                            // serde refuses what Go reads
		{"/v1/chat/completions", `{"model":"llama","max_tokens":-1}`},                             // Python's 422
		{"/v1/completions", `{"model":"llama","prompt":"` + strings.Repeat("word ", 1200) + `"}`}, // too long: 422
		{"/generate", `[1,2]`}, // not an object
	}
	for _, c := range cases {
		resp, body := post(t, u, c.path, c.body)
		if resp.Header.Get("X-Python") != "yes" || body != `{"error":"from python"}` {
			t.Errorf("%s %s: not Python's answer: %d %s", c.path, c.body[:20], resp.StatusCode, body)
		}
	}
	handed := f.handed()
	if len(handed) != len(cases) {
		t.Fatalf("handed %d of %d", len(handed), len(cases))
	}
	for i, c := range cases {
		if handed[i] != "POST "+c.path+" "+c.body {
			t.Errorf("Python got %q, want the request unchanged", handed[i][:min(60, len(handed[i]))])
		}
	}
	resp, _ := http.Get(u + "/health")
	if resp.Header.Get("X-Python") != "yes" {
		t.Error("GET /health was not Python's")
	}
	if len(s.bodies) != 0 {
		t.Errorf("the upstream got %d requests", len(s.bodies))
	}
}

func TestTenantsLeaveEveryRequestToPython(t *testing.T) {
	up := upstream(t, &seen{}, nil)
	snap := snapshot(tgiPool("short", 1000, 2000, up))
	snap.Tenants = true
	f := newFakePython(t, snap)
	_, u := startCore(t, f)
	resp, _ := post(t, u, "/generate", `{"inputs":"hi"}`, "X-Model", "llama")
	if resp.Header.Get("X-Python") != "yes" {
		t.Fatal("a gateway with tenants: the core answered itself")
	}
}

func TestASaturatedPoolQueuesThenRefusesWithRetryAfter(t *testing.T) {
	release := make(chan struct{})
	arrived := make(chan struct{}, 10)
	up := upstream(t, &seen{}, func(w http.ResponseWriter, r *http.Request) {
		arrived <- struct{}{}
		<-release
		w.Header().Set("Content-Type", "application/json")
		_, _ = w.Write([]byte(`{"generated_text":"x"}`))
	})
	pool := tgiPool("short", 1000, 2000, up)
	pool.Endpoints[0].Limit = 1
	snap := snapshot(pool)
	snap.MaxQueueLength = 1
	snap.QueueTimeoutSeconds = 2
	f := newFakePython(t, snap)
	_, u := startCore(t, f)
	type answer struct {
		code int
		body string
		h    http.Header
	}
	answers := make(chan answer, 3)
	send := func() {
		resp, body := post(t, u, "/generate", `{"inputs":"hi","parameters":{"max_new_tokens":5}}`, "X-Model", "llama")
		answers <- answer{resp.StatusCode, body, resp.Header}
	}
	go send()
	<-arrived // the one endpoint's one slot is taken
	go send() // waits in the queue
	waitFor(t, "a queued request", func() bool {
		r := f.snapQueue()
		return r == 1
	})
	resp, body := post(t, u, "/generate", `{"inputs":"hi"}`, "X-Model", "llama") // the queue is full
	if resp.StatusCode != 429 || resp.Header.Get("Retry-After") != "2" ||
		body != `{"error":"Model is overloaded","error_type":"overloaded"}` {
		t.Fatalf("full queue: %d %q %v", resp.StatusCode, body, resp.Header)
	}
	close(release)
	for i := 0; i < 2; i++ {
		a := <-answers
		if a.code != 200 {
			t.Errorf("answer %d: %d %s", i, a.code, a.body)
		}
	}
	waitFor(t, "the report", func() bool {
		req, rej, routed, hists, _, active := f.merged()
		return req["/generate 200"] == 2 && req["/generate 429"] == 1 && rej["queue_full"] == 1 &&
			routed["short"] == 3 && hists[hQueueWait+" short"] == 1 && hists[hUpstream+" short"] == 2 &&
			active["short"]
	})
}

// snapQueue is the queue depth the last report gave for pool "short".
func (f *fakePython) snapQueue() int {
	f.mu.Lock()
	defer f.mu.Unlock()
	if len(f.reports) == 0 {
		return -1
	}
	return f.reports[len(f.reports)-1].QueueDepth["short"]
}

func TestAnEndpointThatRefusesConnectionsIsRetriedElsewhere(t *testing.T) {
	l, _ := net.Listen("tcp", "127.0.0.1:0")
	dead := "http://" + l.Addr().String()
	_ = l.Close()
	var s seen
	up := upstream(t, &s, nil)
	f := newFakePython(t, snapshot(tgiPool("short", 1000, 2000, dead, up)))
	_, u := startCore(t, f)
	for i := 0; i < 4; i++ {
		resp, body := post(t, u, "/v1/completions", `{"model":"llama","prompt":"hi"}`)
		if resp.StatusCode != 200 || resp.Header.Get(endpointHeader) != "ep-short1" {
			t.Fatalf("try %d: %d %s from %s", i, resp.StatusCode, body, resp.Header.Get(endpointHeader))
		}
	}
	waitFor(t, "one connect retry, then the endpoint skipped while down", func() bool {
		_, _, _, _, retries, _ := f.merged()
		return retries["short connect_error"] == 1
	})
}

func TestAStreamIsRelayedAndEndsWithTheRoutesErrorWhenTheUpstreamFallsSilent(t *testing.T) {
	up := upstream(t, &seen{}, func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "text/event-stream")
		_, _ = w.Write([]byte("data: {\"choices\":[{\"delta\":{\"content\":\"a\"}}]}\n\n"))
		w.(http.Flusher).Flush()
		_, _ = w.Write([]byte("data: {\"choices\":[{\"delta\":{\"content\":\"b\"}}]}\n\n"))
		w.(http.Flusher).Flush()
		<-r.Context().Done() // then nothing, until the core gives up and closes
	})
	snap := snapshot(tgiPool("short", 1000, 2000, up))
	snap.StreamIdleTimeout = 0.3
	f := newFakePython(t, snap)
	_, u := startCore(t, f)
	req, _ := http.NewRequest(http.MethodPost, u+"/v1/chat/completions",
		strings.NewReader(`{"model":"llama","stream":true,"messages":[{"role":"user","content":"x"}]}`))
	req.Header.Set("Content-Type", "application/json")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = resp.Body.Close() }()
	var events []string
	sc := bufio.NewScanner(resp.Body)
	for sc.Scan() {
		if line := sc.Text(); line != "" {
			events = append(events, line)
		}
	}
	if len(events) != 4 || !strings.Contains(events[0], `"a"`) || !strings.Contains(events[1], `"b"`) ||
		!strings.Contains(events[2], `"code":"timeout"`) || !strings.Contains(events[2], `"http_status_code":504`) ||
		events[3] != "data: [DONE]" {
		t.Fatalf("events: %q", events)
	}
	waitFor(t, "the idle timeout counted", func() bool {
		_, rej, _, hists, _, _ := f.merged()
		return rej["stream_idle_timeout"] == 1 && hists[hTTFT+" short"] == 1
	})
}

func TestSpillsToTheWiderPoolWhenTheShortOneIsFull(t *testing.T) {
	release := make(chan struct{})
	arrived := make(chan struct{}, 10)
	slow := upstream(t, &seen{}, func(w http.ResponseWriter, r *http.Request) {
		arrived <- struct{}{}
		<-release
		w.Header().Set("Content-Type", "application/json")
		_, _ = w.Write([]byte(`{}`))
	})
	var s seen
	wide := upstream(t, &s, nil)
	short := tgiPool("short", 1000, 2000, slow)
	short.Overload, short.Endpoints[0].Limit = "spill", 1
	f := newFakePython(t, snapshot(short, tgiPool("long", 7000, 8000, wide)))
	_, u := startCore(t, f)
	done := make(chan int)
	go func() {
		resp, _ := post(t, u, "/v1/completions", `{"model":"llama","prompt":"a"}`)
		done <- resp.StatusCode
	}()
	<-arrived
	resp, _ := post(t, u, "/v1/completions", `{"model":"llama","prompt":"b","max_tokens":5}`)
	if resp.StatusCode != 200 || resp.Header.Get(poolHeader) != "long" || resp.Header.Get(overloadHeader) != "spill" {
		t.Fatalf("spill: %d %v", resp.StatusCode, resp.Header)
	}
	close(release)
	if code := <-done; code != 200 {
		t.Errorf("first: %d", code)
	}
}

func TestABrokenChunkedBodyIsA400InTheRoutesShape(t *testing.T) {
	var s seen
	f := newFakePython(t, snapshot(tgiPool("short", 1000, 2000, upstream(t, &s, nil))))
	_, u := startCore(t, f)
	resp, body := rawExchange(t, u, "POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"+
		"Transfer-Encoding: chunked\r\n\r\n5\r\n{\"a\":\r\nzz\r\n")
	if resp.StatusCode != 400 || !strings.Contains(string(body), `"code":"bad_request"`) {
		t.Fatalf("%d %s", resp.StatusCode, body)
	}
	if len(f.handed()) != 0 || len(s.bodies) != 0 {
		t.Errorf("a broken body went on: python %v, upstream %d", f.handed(), len(s.bodies))
	}
}

// rawExchange sends raw bytes on a new connection to the server at u and reads one answer.
func rawExchange(t *testing.T, u, request string) (*http.Response, []byte) {
	t.Helper()
	conn, err := net.Dial("tcp", strings.TrimPrefix(u, "http://"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = conn.Close() })
	_ = conn.SetDeadline(time.Now().Add(5 * time.Second))
	go func() { _, _ = conn.Write([]byte(request)) }() // the server may answer before it all arrives
	resp, err := http.ReadResponse(bufio.NewReader(conn), nil)
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	return resp, body
}
