package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"io"
	"mime"
	"net"
	"net/http"
	"net/http/httputil"
	"net/url"
	"strconv"
	"strings"
	"time"
)

const (
	poolHeader     = "X-TGIPool-Pool"
	endpointHeader = "X-TGIPool-Endpoint"
	overloadHeader = "X-TGIPool-Overload"
	maxRedispatch  = 8   // proxy._MAX_OVERLOAD_REDISPATCH
	clientGone     = 499 // nginx's code for a client that left before its answer
	readChunkBytes = 32 * 1024
)

// What never goes upstream (proxy._REQUEST_DROP) and never comes back (streaming.HOP_BY_HOP).
var (
	hopByHop = canonical("Connection", "Keep-Alive", "Proxy-Authenticate", "Proxy-Authorization",
		"Proxy-Connection", "Te", "Trailer", "Trailers", "Transfer-Encoding", "Upgrade", "Content-Length")
	requestDrop = union(hopByHop, canonical("Host", "Authorization", "Cookie", "X-Forwarded-For",
		"X-Forwarded-Host", "X-Forwarded-Proto", "Forwarded", "X-Real-Ip", "X-Model", "X-Priority",
		"X-Tgipool-Environment", "Expect", "Content-Encoding"))
	streamOverloaded = []byte(`"error_type":"overloaded"`)
)

func canonical(names ...string) map[string]bool {
	m := map[string]bool{}
	for _, n := range names {
		m[http.CanonicalHeaderKey(n)] = true
	}
	return m
}

func union(a, b map[string]bool) map[string]bool {
	m := map[string]bool{}
	for k := range a {
		m[k] = true
	}
	for k := range b {
		m[k] = true
	}
	return m
}

// Core serves the common generation request and hands the rest to Python (the protocol:
// operator/tgipool/gateway/core_link.py).
type Core struct {
	table   *Table
	metrics *Metrics
	python  *httputil.ReverseProxy
	up      *upstreams
}

func NewCore(pythonURL *url.URL) *Core {
	c := &Core{table: NewTable(), metrics: NewMetrics(), up: newUpstreams()}
	c.table.onQueue = c.metrics.QueueDepth
	pyTransport := &http.Transport{MaxIdleConnsPerHost: 256, DisableCompression: true, IdleConnTimeout: 90 * time.Second}
	c.python = &httputil.ReverseProxy{
		Rewrite: func(pr *httputil.ProxyRequest) {
			pr.SetURL(pythonURL)
			pr.Out.Host = pr.In.Host
		},
		Transport:     pyTransport,
		FlushInterval: -1, // held streams and SSE pass event by event
		ErrorHandler: func(w http.ResponseWriter, r *http.Request, err error) {
			if r.Context().Err() != nil {
				return
			}
			rej := &rejection{502, "The gateway's control plane is unavailable", "unavailable", "upstream_error", nil}
			rej.write(w, r.URL.Path, nil)
		},
	}
	return c
}

// Apply takes a snapshot from Python.
func (c *Core) Apply(s *Snapshot) {
	c.metrics.SetBounds(s.Buckets)
	c.up.connect.Store(int64(seconds(s.ConnectTimeout)))
	c.table.Update(s)
}

func seconds(s float64) time.Duration { return time.Duration(s * float64(time.Second)) }

func jsonContentType(h http.Header) bool {
	mt, _, err := mime.ParseMediaType(h.Get("Content-Type"))
	return err == nil && (mt == "application/json" || strings.HasPrefix(mt, "application/") && strings.HasSuffix(mt, "+json"))
}

// handoff sends the request to Python as it came; `read` is what the core already read of its body.
func (c *Core) handoff(w http.ResponseWriter, r *http.Request, read []byte) {
	if read != nil {
		r.Body = io.NopCloser(io.MultiReader(bytes.NewReader(read), r.Body))
	}
	c.python.ServeHTTP(respelling{w}, r)
}

// respelling respells our headers as the answer's head goes out (ReverseProxy copies them with Add,
// which canonicalizes them).
type respelling struct{ http.ResponseWriter }

func (w respelling) WriteHeader(code int) {
	respell(w.Header())
	w.ResponseWriter.WriteHeader(code)
}

func (w respelling) Unwrap() http.ResponseWriter { return w.ResponseWriter }

func (c *Core) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	t0 := arrival(r.Context())
	route := r.URL.Path
	if strings.Contains(strings.ToLower(r.RequestURI), "/internal") {
		// Python's side of the core link is for the core alone: a client may not feed it reports.
		(&rejection{404, "Not found", "not_found", "bad_request", nil}).write(w, route, nil)
		return
	}
	snap := c.table.Snapshot()
	if r.Method != http.MethodPost || !generationRoute(route) || snap == nil || snap.Tenants ||
		!jsonContentType(r.Header) || r.Header.Get("Content-Encoding") != "" {
		c.handoff(w, r, nil)
		return
	}
	rc := http.NewResponseController(w)
	_ = rc.SetReadDeadline(t0.Add(seconds(snap.ClientTimeout)))
	body, err := io.ReadAll(io.LimitReader(r.Body, maxBodyBytes+1))
	_ = rc.SetReadDeadline(time.Time{})
	if err != nil {
		var ne net.Error
		if errors.As(err, &ne) && ne.Timeout() {
			rej := &rejection{408, "The request body did not arrive within " +
				strconv.FormatFloat(snap.ClientTimeout, 'g', -1, 64) + " s (clientTimeoutSeconds)",
				"timeout", "client_timeout", map[string]string{"Connection": "close"}}
			c.reject(w, route, rej, "")
			return
		}
		// A broken chunked body: what is left of it cannot go to Python either.
		rej := &rejection{400, "Malformed request body", "bad_request", "bad_request",
			map[string]string{"Connection": "close"}}
		c.reject(w, route, rej, "")
		return
	}
	if len(body) > maxBodyBytes {
		c.handoff(w, r, body)
		return
	}
	p, ok := parseRequest(route, body, r.Header)
	if !ok {
		c.handoff(w, r, body)
		return
	}
	d, ok := c.dispatch(p, r.Header)
	if !ok {
		c.handoff(w, r, body)
		return
	}
	if out := upstreamBody(p, d); out != nil {
		body = out
	}
	c.forward(w, r, snap, p, d, body, t0)
}

func (c *Core) reject(w http.ResponseWriter, route string, rej *rejection, pool string) {
	rec := &record{route: route, code: rej.status, rejections: []string{rej.reason}}
	var extra map[string]string
	if pool != "" {
		extra = map[string]string{poolHeader: pool}
	}
	rej.write(w, route, extra)
	c.metrics.add(rec)
}

type decision struct {
	pool, fallback *Pool
	tokens         int
	priority       int
	upstreamModel  string
	tgiAPI         bool
	overload       string
}

// dispatch is dispatch.dispatch for what the core serves; ok=false hands the request to Python (an
// unknown model, a pool counting with a tokenizer file, a resting pool, a policy the core leaves to
// Python, any answer that is an error of Python's).
func (c *Core) dispatch(p *parsed, h http.Header) (*decision, bool) {
	env, ok := environment(h)
	if !ok {
		return nil, false
	}
	prio, ok := priority(h)
	if !ok {
		return nil, false
	}
	n, sum := 0, 0 // every pool the core serves counts with the approximation: one count for all
	for _, text := range p.texts {
		k := approxTokens(text)
		sum += k
		n = max(n, k)
	}
	t := c.table
	t.mu.Lock()
	defer t.mu.Unlock()
	pools := t.candidates(p.model, env)
	if !strings.HasPrefix(p.route, "/v1/") {
		tgi := pools[:0:0]
		for _, pl := range pools {
			if pl.TGIAPI {
				tgi = append(tgi, pl)
			}
		}
		pools = tgi
	}
	if len(pools) == 0 {
		return nil, false
	}
	for _, pl := range pools {
		if !pl.eligible() {
			return nil, false
		}
	}
	pool := choose(pools, n, p.maxNew)
	if pool == nil || len(pool.endpoints) == 0 {
		return nil, false
	}
	d := &decision{pool: pool, tokens: sum, priority: prio, upstreamModel: pool.UpstreamModel, tgiAPI: pool.TGIAPI,
		overload: pool.Overload}
	if pool.Overload == "spill" && pool.Fallback != nil {
		fb := t.pools[*pool.Fallback]
		if fb != nil && fb.Environment == pool.Environment && fb.UpstreamModel == pool.UpstreamModel {
			if !fb.eligible() {
				return nil, false
			}
			if fb.accepts(n, p.maxNew) {
				d.fallback = fb
			}
		}
	} else if pool.Overload == "spill" {
		for _, pl := range pools { // the next wider pool of the model that fits (dispatch._wider)
			if pl.TotalLimit > pool.TotalLimit && pl.Environment == pool.Environment &&
				pl.UpstreamModel == pool.UpstreamModel && pl.fits(n, p.maxNew) &&
				(d.fallback == nil || pl.TotalLimit < d.fallback.TotalLimit ||
					(pl.TotalLimit == d.fallback.TotalLimit && (pl.Priority > d.fallback.Priority ||
						(pl.Priority == d.fallback.Priority && pl.Name < d.fallback.Name)))) {
				d.fallback = pl
			}
		}
	}
	return d, true
}

// upstreamBody is parsing.upstream_body without adapters: nil sends the client's bytes as they are.
func upstreamBody(p *parsed, d *decision) []byte {
	if !strings.HasPrefix(p.route, "/v1/") {
		return nil
	}
	if p.modelSet && *p.model == d.upstreamModel {
		return nil
	}
	if d.tgiAPI && !p.modelSet { // absent or null: TGI's base model already
		return nil
	}
	name, _ := json.Marshal(d.upstreamModel)
	p.object["model"] = name
	out, err := json.Marshal(p.object)
	if err != nil {
		return nil
	}
	return out
}

func upstreamHeaders(in http.Header) http.Header {
	named := map[string]bool{}
	for _, v := range in.Values("Connection") {
		for _, t := range strings.Split(v, ",") {
			named[http.CanonicalHeaderKey(strings.TrimSpace(t))] = true
		}
	}
	out := make(http.Header, len(in))
	for k, v := range in {
		if requestDrop[k] || named[k] {
			continue
		}
		out[k] = v
	}
	return out
}

// attempt state shared by the tries of one request (proxy._Try).
type tries struct {
	snap         *Snapshot
	route        string
	body         []byte
	headers      http.Header
	exclude      []*Endpoint
	retried      bool
	redispatches int
	upstream     time.Duration
	waited       time.Duration
	deadline     time.Time
	t0           time.Time
	extra        map[string]string
	rec          *record
}

func (c *Core) forward(w http.ResponseWriter, r *http.Request, snap *Snapshot, p *parsed, d *decision,
	body []byte, t0 time.Time) {
	rec := &record{route: p.route, pool: d.pool.Name}
	c.metrics.started(d.pool.Name)
	tr := &tries{snap: snap, route: p.route, body: body, headers: upstreamHeaders(r.Header),
		deadline: time.Now().Add(seconds(snap.QueueTimeoutSeconds)), t0: t0, extra: map[string]string{}, rec: rec}
	tried := ""
	defer func() {
		if tried != "" { // an endpoint was tried: the latencies, under the pool of the last try
			end := time.Since(t0)
			rec.histPool = tried
			rec.upstream = tr.upstream.Seconds()
			rec.added = max(0, (end - tr.upstream - tr.waited).Seconds())
			rec.total = end.Seconds()
		}
		c.metrics.add(rec)
	}()
	for {
		used, ep, waited, rej := c.acquire(r.Context(), snap, d, tr.exclude, tr.deadline)
		if rej != nil {
			if rej.status == clientGone {
				rec.code = clientGone
				return
			}
			rec.rejections = append(rec.rejections, rej.reason)
			rec.code = rej.status
			rej.write(w, p.route, map[string]string{poolHeader: d.pool.Name})
			return
		}
		if waited > 0 {
			tr.waited += waited
			rec.queueWait = append(rec.queueWait, waited.Seconds())
		}
		if used != d.pool {
			tr.extra[overloadHeader] = d.overload
			rec.fallbacks = append(rec.fallbacks, used.Name)
		}
		tried = used.Name
		again, reason := c.attempt(w, r, tr, used, ep, d.tokens)
		if !again {
			return
		}
		if reason == "overloaded" {
			c.table.markBusy(ep) // after the release, which clears a busy mark
		}
		rec.retries = append(rec.retries, labelPair{used.Name, reason})
	}
}

// acquire is dispatch.acquire: room, else the fallback, else the queue; else a rejection.
func (c *Core) acquire(ctx context.Context, snap *Snapshot, d *decision, exclude []*Endpoint,
	deadline time.Time) (*Pool, *Endpoint, time.Duration, *rejection) {
	t := c.table
	t.mu.Lock()
	pool := d.pool
	if pool.removed {
		t.mu.Unlock()
		return nil, nil, 0, &rejection{503, "Pool " + pool.Name + " was removed", "unavailable", "pool_removed", nil}
	}
	if ep := t.tryAcquire(pool, d.tokens, exclude); ep != nil {
		t.mu.Unlock()
		return pool, ep, 0, nil
	}
	if fb := d.fallback; fb != nil && !fb.removed {
		if ep := t.tryAcquire(fb, d.tokens, exclude); ep != nil {
			t.mu.Unlock()
			return fb, ep, 0, nil
		}
	}
	if len(exclude) > 0 { // a retry with no other endpoint free: the same one again, unless it is down
		if ep := t.tryAcquire(pool, d.tokens, nil); ep != nil {
			t.mu.Unlock()
			return pool, ep, 0, nil
		}
	}
	qt := snap.QueueTimeoutSeconds
	if pool.Overload == "reject" {
		t.mu.Unlock()
		return nil, nil, 0, overloaded(qt, "rejected")
	}
	timeout := time.Until(deadline)
	if len(pool.waiters) >= snap.MaxQueueLength || timeout <= 0 {
		t.mu.Unlock()
		return nil, nil, 0, overloaded(qt, "queue_full")
	}
	w := t.enqueue(pool, d.priority, d.tokens)
	t.mu.Unlock()
	started := time.Now()
	timer := time.NewTimer(timeout)
	defer timer.Stop()
	select {
	case ep := <-w.grant:
		if ep == nil {
			return nil, nil, 0, &rejection{503, "Pool " + pool.Name + " was removed", "unavailable", "pool_removed", nil}
		}
		return pool, ep, time.Since(started), nil
	case <-timer.C:
		t.cancel(pool, w)
		return nil, nil, 0, overloaded(qt, "overloaded")
	case <-ctx.Done():
		t.cancel(pool, w)
		return nil, nil, 0, &rejection{status: clientGone}
	}
}

var errIdle = errors.New("stream idle timeout")

// timedReader fails a read that waits longer than `idle` for the upstream (streamIdleTimeoutSeconds).
type timedReader struct {
	body io.Reader
	conn net.Conn
	idle time.Duration
	gone func() bool // the client left (its deadline ended the read)
}

func (tr *timedReader) Read(buf []byte) (int, error) {
	if tr.gone() { // its deadline would be moved below
		return 0, context.Canceled
	}
	_ = tr.conn.SetReadDeadline(time.Now().Add(tr.idle))
	n, err := tr.body.Read(buf)
	if err != nil && err != io.EOF && isTimeout(err) && !tr.gone() {
		return n, errIdle
	}
	return n, err
}

func mediaType(h http.Header) string {
	mt, _, _ := mime.ParseMediaType(h.Get("Content-Type"))
	return mt
}

// attempt is one try on ep, which it always releases; again=true when another try may do better.
func (c *Core) attempt(w http.ResponseWriter, r *http.Request, tr *tries, pool *Pool, ep *Endpoint,
	tokens int) (again bool, reason string) {
	snap, route, rec := tr.snap, tr.route, tr.rec
	tUp := time.Now() // the upstream's time starts here, or when the request left once it is written
	answerBy := tUp.Add(seconds(snap.ResponseTimeout))
	var upstreamEnd time.Time
	var resp *http.Response
	var stop func() bool
	defer func() {
		if stop != nil {
			stop()
		}
		if resp != nil {
			_ = resp.Body.Close() // not read to the end: the connection closes and TGI cancels the generation
		}
		if upstreamEnd.IsZero() {
			upstreamEnd = time.Now()
		}
		tr.upstream += upstreamEnd.Sub(tUp)
		c.table.release(ep, tokens)
	}()
	fail := func(rej *rejection) (bool, string) {
		rec.code = rej.status
		rec.rejections = append(rec.rejections, rej.reason)
		extra := map[string]string{poolHeader: pool.Name}
		for k, v := range tr.extra {
			extra[k] = v
		}
		rej.write(w, route, extra)
		return false, ""
	}
	gone := func() bool { return r.Context().Err() != nil }
	resp, conn, stop, err := c.up.do(r.Context(), ep.host, route, tr.headers, tr.body, answerBy)
	if err == nil {
		tUp = conn.sent // writing the request was the core's work
	} else {
		var ce connectError
		switch {
		case gone():
			rec.code = clientGone
			return false, ""
		case errors.As(err, &ce):
			c.table.markDown(ep)
		case isTimeout(err):
			return fail(timedOut(snap.ResponseTimeout))
		}
		if !tr.retried { // refused, or closed before answering: another endpoint
			tr.retried = true
			tr.exclude = append(tr.exclude, ep)
			return true, "connect_error"
		}
		return fail(&rejection{502, "No endpoint of pool " + pool.Name + " could be reached", "unavailable",
			"upstream_error", nil})
	}
	status := resp.StatusCode
	isStream := mediaType(resp.Header) == "text/event-stream"
	overloadedAnswer := status == http.StatusTooManyRequests
	var first []byte
	stalled := false
	var body io.Reader = resp.Body
	if isStream && status == http.StatusOK {
		body = &timedReader{body: resp.Body, conn: conn.nc, idle: seconds(snap.StreamIdleTimeout), gone: gone}
		buf := make([]byte, readChunkBytes)
		n, err := body.Read(buf)
		first = buf[:n]
		switch {
		case errors.Is(err, errIdle):
			stalled = true
		case err != nil && err != io.EOF:
			status = http.StatusBadGateway // died before the first byte: as a 5xx
		}
		overloadedAnswer = bytes.HasPrefix(first, []byte(`data:{"error"`)) && bytes.Contains(first, streamOverloaded)
	}
	if overloadedAnswer && tr.redispatches < maxRedispatch && time.Now().Before(tr.deadline) {
		tr.redispatches++
		return true, "overloaded"
	}
	if status >= 500 && !tr.retried {
		tr.retried = true
		tr.exclude = append(tr.exclude, ep)
		return true, "status_5xx"
	}
	rec.code = status
	if isStream && status < 500 {
		upstreamEnd = c.relay(w, r, tr, resp, body, first, stalled, pool, ep, conn.nc)
		return false, ""
	}
	if isStream {
		return fail(&rejection{502, "Upstream closed the stream", "unavailable", "upstream_error", nil})
	}
	payload, err := io.ReadAll(resp.Body) // by answerBy, still the connection's deadline
	if err == nil {
		upstreamEnd = receivedAt(conn.nc) // its last byte came then, before the core woke to read it
	} else {
		upstreamEnd = time.Now()
		if gone() {
			rec.code = clientGone
			return false, ""
		}
		if isTimeout(err) {
			return fail(timedOut(snap.ResponseTimeout))
		}
		return fail(&rejection{502, "Upstream failed while answering", "unavailable", "upstream_error", nil})
	}
	h := w.Header()
	if status >= 400 && (strings.HasPrefix(route, "/v1/") || mediaType(resp.Header) != "application/json") {
		// TGI's body rejections are plain text and its errors TGI-shaped on /v1 too: the route's shape.
		extra := map[string]string{poolHeader: pool.Name, endpointHeader: ep.ID}
		for k, v := range tr.extra {
			extra[k] = v
		}
		refusal(status, payload).write(w, route, extra)
		return false, ""
	}
	copyResponseHeaders(h, resp.Header, pool.Name, ep.ID, tr.extra)
	h.Set("Content-Length", strconv.Itoa(len(payload)))
	w.WriteHeader(status)
	_ = http.NewResponseController(w).SetWriteDeadline(time.Now().Add(seconds(snap.ClientTimeout)))
	_, _ = w.Write(payload)
	_ = http.NewResponseController(w).Flush() // written here, so the latencies end at its last byte
	return false, ""
}

func copyResponseHeaders(dst, src http.Header, pool, endpoint string, extra map[string]string) {
	for k, v := range src {
		if !hopByHop[k] {
			dst[k] = v
		}
	}
	respell(dst)
	setExact(dst, poolHeader, pool)
	setExact(dst, endpointHeader, endpoint) // which server answered, by id, never its address
	for k, v := range extra {
		setExact(dst, k, v)
	}
}

func timedOut(s float64) *rejection {
	return &rejection{504, "Upstream did not answer within " + strconv.FormatFloat(s, 'g', -1, 64) +
		" s (responseTimeoutSeconds)", "timeout", "upstream_timeout", nil}
}

// relay writes the event stream to the client as it comes (streaming.relay); when the upstream's last
// byte came (to `up`).
func (c *Core) relay(w http.ResponseWriter, r *http.Request, tr *tries, resp *http.Response, body io.Reader,
	first []byte, stalled bool, pool *Pool, ep *Endpoint, up net.Conn) time.Time {
	snap, rec := tr.snap, tr.rec
	copyResponseHeaders(w.Header(), resp.Header, pool.Name, ep.ID, tr.extra)
	w.WriteHeader(resp.StatusCode)
	rc := http.NewResponseController(w)
	client := seconds(snap.ClientTimeout)
	send := func(b []byte) bool {
		_ = rc.SetWriteDeadline(time.Now().Add(client))
		if _, err := w.Write(b); err != nil {
			return false
		}
		return rc.Flush() == nil
	}
	last := receivedAt(up)
	if len(first) > 0 {
		if !send(first) {
			panic(http.ErrAbortHandler) // the client left or stopped reading: drop its connection
		}
		rec.ttft = time.Since(tr.t0).Seconds()
		rec.hasTTFT = true
	} else if !send(nil) {
		panic(http.ErrAbortHandler)
	}
	var end *rejection
	buf := make([]byte, readChunkBytes)
	for !stalled {
		n, err := body.Read(buf)
		if n > 0 {
			last = receivedAt(up)
			if !send(buf[:n]) {
				panic(http.ErrAbortHandler)
			}
		}
		if err == io.EOF {
			break
		}
		if errors.Is(err, errIdle) {
			stalled = true
		} else if err != nil {
			if r.Context().Err() != nil {
				return last
			}
			end = &rejection{500, "Incomplete generation stream: upstream failed",
				"incomplete_generation_stream", "upstream_error", nil}
			break
		}
	}
	if stalled {
		end = &rejection{504, "Upstream sent nothing for " +
			strconv.FormatFloat(snap.StreamIdleTimeout, 'g', -1, 64) + " s (streamIdleTimeoutSeconds)",
			"timeout", "stream_idle_timeout", nil}
	}
	if end != nil {
		rec.rejections = append(rec.rejections, end.reason)
		send(end.event(tr.route))
	}
	return last
}

// respell gives our own headers back the spelling the Python gateway uses (X-TGIPool-...), which Go's
// client canonicalized to X-Tgipool-... when it read them.
func respell(h http.Header) {
	for k, v := range h {
		if strings.HasPrefix(k, "X-Tgipool-") {
			delete(h, k)
			h["X-TGIPool-"+k[len("X-Tgipool-"):]] = v
		}
	}
}
