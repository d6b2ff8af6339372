package main

import (
	"bytes"
	"context"
	"encoding/json"
	"log/slog"
	"net/http"
	"sort"
	"sync"
	"time"
)

// Histogram names, as metrics.py names them without the tgipool_gateway_ prefix.
const (
	hQueueWait = "queue_wait_seconds"
	hUpstream  = "upstream_seconds"
	hTTFT      = "ttft_seconds"
	hRequest   = "request_seconds"
	hAdded     = "added_latency_seconds"
)

type labelPair struct{ a, b string }

type histogram struct {
	Buckets []int64 `json:"buckets"` // per bucket, not cumulative; the last is +Inf
	Sum     float64 `json:"sum"`
}

// Report is what the core sends Python every interval: deltas since the last report (the protocol:
// operator/tgipool/gateway/core_link.py).
type Report struct {
	Requests   []requestCount                   `json:"requests"`
	Routed     map[string]int64                 `json:"routed"`
	Fallbacks  []fallbackCount                  `json:"fallbacks"`
	Rejections map[string]int64                 `json:"rejections"`
	Retries    []retryCount                     `json:"retries"`
	QueueDepth map[string]int                   `json:"queue_depth"`
	Histograms map[string]map[string]*histogram `json:"histograms"`
	Active     []string                         `json:"active"`
}

type requestCount struct {
	Route string `json:"route"`
	Code  int    `json:"code"`
	N     int64  `json:"n"`
}
type fallbackCount struct {
	Pool     string `json:"pool"`
	Fallback string `json:"fallback"`
	N        int64  `json:"n"`
}
type retryCount struct {
	Pool   string `json:"pool"`
	Reason string `json:"reason"`
	N      int64  `json:"n"`
}

// Metrics accumulates what the core measured until the reporter sends it to Python, whose /metrics
// stays the gateway's one exposition (the same families, the same buckets).
type Metrics struct {
	mu         sync.Mutex
	requests   map[codeKey]int64
	routed     map[string]int64
	fallbacks  map[labelPair]int64
	rejections map[string]int64
	retries    map[labelPair]int64
	hists      map[string]map[string]*histogram
	depth      map[string]int
	active     map[string]bool
	inFlight   map[string]int // per pool, for `active`
	bounds     map[string][]float64
}

func NewMetrics() *Metrics {
	m := &Metrics{depth: map[string]int{}, inFlight: map[string]int{}}
	m.reset()
	return m
}

func (m *Metrics) reset() {
	m.requests = map[codeKey]int64{}
	m.routed = map[string]int64{}
	m.fallbacks = map[labelPair]int64{}
	m.rejections = map[string]int64{}
	m.retries = map[labelPair]int64{}
	m.hists = map[string]map[string]*histogram{}
	m.active = map[string]bool{}
	for pool, n := range m.inFlight {
		if n > 0 {
			m.active[pool] = true
		}
	}
}

// SetBounds takes the histograms' bucket bounds from a snapshot.
func (m *Metrics) SetBounds(b map[string][]float64) {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.bounds = b
}

func (m *Metrics) QueueDepth(pool string, depth int) {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.depth[pool] = depth
}

// started: a request was sent to `pool` (it keeps the pool's demand Lease renewed while in flight).
func (m *Metrics) started(pool string) {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.routed[pool]++
	m.inFlight[pool]++
	m.active[pool] = true
}

// record is one request's measurements, added under one lock when it ends.
type record struct {
	route      string
	code       int    // the answer's status (0: none counted)
	pool       string // the pool routed to, whose started() it ends ("" if none)
	histPool   string // the pool of the last try: the latencies' label ("" if no endpoint was tried)
	rejections []string
	retries    []labelPair
	fallbacks  []string
	queueWait  []float64
	upstream   float64 // seconds, with histPool
	added      float64
	total      float64
	ttft       float64
	hasTTFT    bool
}

func (m *Metrics) add(r *record) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if r.code != 0 {
		m.requests[codeKey{r.route, r.code}]++
	}
	for _, reason := range r.rejections {
		m.rejections[reason]++
	}
	for _, rt := range r.retries {
		m.retries[rt]++
	}
	for _, fb := range r.fallbacks {
		m.fallbacks[labelPair{r.pool, fb}]++
	}
	if r.pool != "" {
		m.inFlight[r.pool]--
	}
	for _, v := range r.queueWait { // queued in the pool routed to
		m.observe(hQueueWait, r.pool, v)
	}
	if r.histPool == "" {
		return
	}
	if r.hasTTFT {
		m.observe(hTTFT, r.histPool, r.ttft)
	}
	m.observe(hUpstream, r.histPool, r.upstream)
	m.observe(hAdded, r.histPool, r.added)
	m.observe(hRequest, r.histPool, r.total)
}

func (m *Metrics) observe(name, pool string, v float64) {
	bounds := m.bounds[name]
	byPool := m.hists[name]
	if byPool == nil {
		byPool = map[string]*histogram{}
		m.hists[name] = byPool
	}
	h := byPool[pool]
	if h == nil {
		h = &histogram{Buckets: make([]int64, len(bounds)+1)}
		byPool[pool] = h
	}
	h.Buckets[sort.SearchFloat64s(bounds, v)]++ // the first bound >= v: Prometheus' `le`
	h.Sum += v
}

type codeKey struct {
	route string
	code  int
}

// take returns the report and starts new deltas.
func (m *Metrics) take() *Report {
	m.mu.Lock()
	defer m.mu.Unlock()
	r := &Report{Routed: m.routed, Rejections: m.rejections, Histograms: m.hists,
		QueueDepth: map[string]int{}, Active: []string{}, Requests: []requestCount{},
		Fallbacks: []fallbackCount{}, Retries: []retryCount{}}
	for k, n := range m.requests {
		r.Requests = append(r.Requests, requestCount{k.route, k.code, n})
	}
	for k, n := range m.fallbacks {
		r.Fallbacks = append(r.Fallbacks, fallbackCount{k.a, k.b, n})
	}
	for k, n := range m.retries {
		r.Retries = append(r.Retries, retryCount{k.a, k.b, n})
	}
	for pool, d := range m.depth {
		r.QueueDepth[pool] = d
	}
	for pool := range m.active {
		r.Active = append(r.Active, pool)
	}
	sort.Strings(r.Active)
	m.reset()
	return r
}

// putBack merges a report that could not be sent into the running deltas.
func (m *Metrics) putBack(r *Report) {
	m.mu.Lock()
	defer m.mu.Unlock()
	for _, c := range r.Requests {
		m.requests[codeKey{c.Route, c.Code}] += c.N
	}
	for k, n := range r.Routed {
		m.routed[k] += n
	}
	for _, c := range r.Fallbacks {
		m.fallbacks[labelPair{c.Pool, c.Fallback}] += c.N
	}
	for k, n := range r.Rejections {
		m.rejections[k] += n
	}
	for _, c := range r.Retries {
		m.retries[labelPair{c.Pool, c.Reason}] += c.N
	}
	for name, byPool := range r.Histograms {
		for pool, h := range byPool {
			cur := m.hists[name]
			if cur == nil {
				cur = map[string]*histogram{}
				m.hists[name] = cur
			}
			if c := cur[pool]; c != nil && len(c.Buckets) == len(h.Buckets) {
				for i, n := range h.Buckets {
					c.Buckets[i] += n
				}
				c.Sum += h.Sum
			} else {
				cur[pool] = h
			}
		}
	}
	for _, p := range r.Active {
		m.active[p] = true
	}
}

// Report sends the deltas to Python every interval until ctx ends; a failed send is retried with the
// next one (nothing measured is lost while Python restarts).
func (m *Metrics) Report(ctx context.Context, client *http.Client, url string, every time.Duration) {
	tick := time.NewTicker(every)
	defer tick.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
		}
		r := m.take()
		body, _ := json.Marshal(r)
		req, _ := http.NewRequestWithContext(ctx, http.MethodPost, url, bytes.NewReader(body))
		req.Header.Set("Content-Type", "application/json")
		resp, err := client.Do(req)
		if err == nil {
			_ = resp.Body.Close()
			if resp.StatusCode == http.StatusNoContent || resp.StatusCode == http.StatusOK {
				continue
			}
			if resp.StatusCode < 500 { // refused as it is: sending it again would be refused forever
				slog.Error("report refused, dropped", "status", resp.StatusCode)
				continue
			}
			slog.Warn("report refused", "status", resp.StatusCode)
		} else {
			slog.Warn("report not sent", "error", err.Error())
		}
		m.putBack(r)
	}
}
