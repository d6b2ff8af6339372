package main

import (
	"container/heap"
	"net/url"
	"sort"
	"sync"
	"sync/atomic"
	"time"
)

// Snapshot is what the Python gateway sends (GET /internal/core/snapshot): its configuration and
// routing table. The core keeps no configuration of its own.
type Snapshot struct {
	Version             int64                `json:"version"`
	Tenants             bool                 `json:"tenants"`
	DefaultPool         *string              `json:"default_pool"`
	QueueTimeoutSeconds float64              `json:"queue_timeout_seconds"`
	MaxQueueLength      int                  `json:"max_queue_length"`
	ConnectTimeout      float64              `json:"connect_timeout_seconds"`
	ResponseTimeout     float64              `json:"response_timeout_seconds"`
	StreamIdleTimeout   float64              `json:"stream_idle_timeout_seconds"`
	ClientTimeout       float64              `json:"client_timeout_seconds"`
	Buckets             map[string][]float64 `json:"buckets"`
	Pools               []PoolConfig         `json:"pools"`
}

type PoolConfig struct {
	Name          string           `json:"name"`
	Model         string           `json:"model"`
	Environment   string           `json:"environment"`
	InputLimit    int              `json:"input_limit"`
	TotalLimit    int              `json:"total_limit"`
	Priority      int              `json:"priority"`
	Fallback      *string          `json:"fallback"`
	Overload      string           `json:"overload"`
	Spare         *string          `json:"spare"`
	Cap           *int             `json:"cap"`
	Tokenizer     *string          `json:"tokenizer"`
	Engine        string           `json:"engine"`
	TGIAPI        bool             `json:"tgi_api"`
	UpstreamModel string           `json:"upstream_model"`
	Hold          bool             `json:"hold"`
	Adapters      bool             `json:"adapters"`
	Endpoints     []EndpointConfig `json:"endpoints"`
}

type EndpointConfig struct {
	URL   string `json:"url"`
	ID    string `json:"id"`
	Limit int    `json:"limit"`
}

const (
	downFor  = time.Second            // an endpoint refusing connections is skipped this long
	busyFor  = 250 * time.Millisecond // an endpoint that answered 429 is skipped this long
	tgiChunk = 1024                   // TGI validates min(max_new_tokens, 1024)
)

// Endpoint is one server; its counters survive snapshots (keyed by URL), as in routing.py.
type Endpoint struct {
	URL, ID        string
	host           string // host:port of an http:// URL; "" for any other (its pools go to Python)
	limit          int
	inFlight       int
	inFlightTokens int
	downUntil      time.Time
	busyUntil      time.Time
	removed        bool
	pools          []*Pool
}

func (e *Endpoint) available(now time.Time) bool {
	return !e.removed && e.inFlight < e.limit && !now.Before(e.downUntil) && !now.Before(e.busyUntil)
}

// Pool is a pool's routing state: its configuration, endpoints and priority wait queue.
type Pool struct {
	PoolConfig
	endpoints []*Endpoint
	waiters   waiterHeap
	rotation  int
	removed   bool
	table     *Table
}

// fits: the whole request fits (routing rule 1 of routing.py).
func (p *Pool) fits(n int, maxNew *int) bool {
	if n > p.InputLimit {
		return false
	}
	return maxNew == nil || n+*maxNew <= p.TotalLimit
}

// accepts: what the server itself accepts (TGI validates at most 1024 new tokens at a time).
func (p *Pool) accepts(n int, maxNew *int) bool {
	if n > p.InputLimit {
		return false
	}
	if maxNew == nil {
		return true
	}
	m := *maxNew
	if p.TGIAPI && m > tgiChunk {
		m = tgiChunk
	}
	return n+m <= p.TotalLimit
}

// eligible: the core serves the pool's requests itself (else Python does, whole).
func (p *Pool) eligible() bool {
	if p.Tokenizer != nil || !(p.Overload == "queue" || p.Overload == "reject" || p.Overload == "spill") {
		return false
	}
	for _, ep := range p.endpoints {
		if ep.host == "" {
			return false
		}
	}
	return true
}

// plainHost is the host:port of an http:// endpoint URL without a path; "" otherwise.
func plainHost(raw string) string {
	u, err := url.Parse(raw)
	if err != nil || u.Scheme != "http" || u.Host == "" || (u.Path != "" && u.Path != "/") || u.User != nil {
		return ""
	}
	if u.Port() == "" {
		return u.Host + ":80"
	}
	return u.Host
}

// pick is the least work in flight among available endpoints, scanning from a rotating start so ties
// go round-robin. Called with the table's lock held.
func (p *Pool) pick(now time.Time, exclude []*Endpoint) *Endpoint {
	var best *Endpoint
	n := len(p.endpoints)
	if n == 0 {
		return nil
	}
	start := p.rotation % n
	p.rotation++
	for i := 0; i < n; i++ {
		ep := p.endpoints[(start+i)%n]
		if !ep.available(now) || contains(exclude, ep) {
			continue
		}
		if best == nil || ep.inFlight < best.inFlight ||
			(ep.inFlight == best.inFlight && ep.inFlightTokens < best.inFlightTokens) {
			best = ep
		}
	}
	return best
}

func contains(eps []*Endpoint, ep *Endpoint) bool {
	for _, e := range eps {
		if e == ep {
			return true
		}
	}
	return false
}

type waiter struct {
	priority int
	seq      uint64
	tokens   int
	grant    chan *Endpoint // buffered 1; nil sent when the pool is removed
	state    int            // waiting, granted, cancelled
	index    int
}

const (
	waiting = iota
	granted
	cancelled
)

type waiterHeap []*waiter

func (h waiterHeap) Len() int { return len(h) }
func (h waiterHeap) Less(i, j int) bool {
	if h[i].priority != h[j].priority {
		return h[i].priority > h[j].priority
	}
	return h[i].seq < h[j].seq
}
func (h waiterHeap) Swap(i, j int) {
	h[i], h[j] = h[j], h[i]
	h[i].index, h[j].index = i, j
}
func (h *waiterHeap) Push(x any) {
	w := x.(*waiter)
	w.index = len(*h)
	*h = append(*h, w)
}
func (h *waiterHeap) Pop() any {
	old := *h
	w := old[len(old)-1]
	*h = old[:len(old)-1]
	return w
}

// Table is the routing state: pools by name and model, endpoints by URL, under one lock.
type Table struct {
	mu        sync.Mutex
	snap      atomic.Pointer[Snapshot] // read without the lock by every request
	pools     map[string]*Pool
	byModel   map[string][]*Pool
	endpoints map[string]*Endpoint
	seq       uint64
	onQueue   func(pool string, depth int) // queue depth changes (metrics)
}

func NewTable() *Table {
	return &Table{pools: map[string]*Pool{}, byModel: map[string][]*Pool{}, endpoints: map[string]*Endpoint{}}
}

// Snapshot is the configuration now (nil before the first).
func (t *Table) Snapshot() *Snapshot {
	return t.snap.Load()
}

// Update swaps in a snapshot, keeping the state of the pools and endpoints that remain; waiters of a
// removed pool are refused, an endpoint that disappears takes no new requests.
func (t *Table) Update(s *Snapshot) {
	t.mu.Lock()
	defer t.mu.Unlock()
	pools := make(map[string]*Pool, len(s.Pools))
	for _, cfg := range s.Pools {
		p := t.pools[cfg.Name]
		if p == nil {
			p = &Pool{table: t}
		}
		p.PoolConfig = cfg
		pools[cfg.Name] = p
	}
	endpoints := make(map[string]*Endpoint)
	for _, p := range pools {
		for _, ep := range p.endpoints {
			ep.pools = nil
		}
	}
	for _, p := range pools {
		eps := make([]*Endpoint, 0, len(p.PoolConfig.Endpoints))
		for _, ec := range p.PoolConfig.Endpoints {
			ep := endpoints[ec.URL]
			if ep == nil {
				ep = t.endpoints[ec.URL]
			}
			if ep == nil {
				ep = &Endpoint{URL: ec.URL}
			}
			ep.ID, ep.limit, ep.removed = ec.ID, ec.Limit, false
			ep.host = plainHost(ec.URL)
			ep.pools = append(ep.pools, p)
			endpoints[ec.URL] = ep
			eps = append(eps, ep)
		}
		p.endpoints = eps
	}
	for url, ep := range t.endpoints {
		if _, ok := endpoints[url]; !ok {
			ep.removed = true
			ep.pools = nil
		}
	}
	for name, p := range t.pools {
		if _, ok := pools[name]; !ok {
			p.removed = true
			for _, w := range p.waiters {
				if w.state == waiting {
					w.state = cancelled
					w.grant <- nil
				}
			}
			p.waiters = nil
			t.queueChanged(p)
		}
	}
	byModel := map[string][]*Pool{}
	for _, p := range pools {
		byModel[p.Model] = append(byModel[p.Model], p)
	}
	for _, ps := range byModel {
		sort.Slice(ps, func(i, j int) bool { return ps[i].Name < ps[j].Name })
	}
	t.pools, t.endpoints, t.byModel = pools, endpoints, byModel
	t.snap.Store(s)
	for _, p := range pools {
		t.dispatch(p)
	}
}

// candidates: pools of the environment serving the model (no model or "tgi": the default pool's).
func (t *Table) candidates(model *string, env string) []*Pool {
	var pools []*Pool
	if model != nil && *model != "tgi" {
		pools = t.byModel[*model]
	} else if def := t.snap.Load().DefaultPool; def == nil {
		return nil
	} else if d := t.pools[*def]; d != nil {
		pools = t.byModel[d.Model]
	}
	var out []*Pool
	for _, p := range pools {
		if p.Environment == env {
			out = append(out, p)
		}
	}
	return out
}

// choose applies routing.py's rule: the smallest pool that fits, else the widest that accepts; nil: 422.
func choose(pools []*Pool, n int, maxNew *int) *Pool {
	var best *Pool
	for _, p := range pools {
		if p.fits(n, maxNew) && (best == nil || p.TotalLimit < best.TotalLimit ||
			(p.TotalLimit == best.TotalLimit && (p.Priority > best.Priority ||
				(p.Priority == best.Priority && p.Name < best.Name)))) {
			best = p
		}
	}
	if best != nil {
		return best
	}
	for _, p := range pools {
		if p.accepts(n, maxNew) && (best == nil || p.TotalLimit > best.TotalLimit ||
			(p.TotalLimit == best.TotalLimit && p.Priority > best.Priority)) {
			best = p
		}
	}
	return best
}

// tryAcquire: an endpoint for a new request, unless someone already waits (FIFO within priority).
func (t *Table) tryAcquire(p *Pool, tokens int, exclude []*Endpoint) *Endpoint {
	if len(p.waiters) > 0 {
		return nil
	}
	ep := p.pick(time.Now(), exclude)
	if ep != nil {
		ep.inFlight++
		ep.inFlightTokens += tokens
	}
	return ep
}

func (t *Table) enqueue(p *Pool, priority, tokens int) *waiter {
	t.seq++
	w := &waiter{priority: priority, seq: t.seq, tokens: tokens, grant: make(chan *Endpoint, 1)}
	heap.Push(&p.waiters, w)
	t.queueChanged(p)
	return w
}

// cancel forgets a waiter that timed out or left; an endpoint already granted to it goes back.
func (t *Table) cancel(p *Pool, w *waiter) {
	t.mu.Lock()
	defer t.mu.Unlock()
	switch w.state {
	case granted:
		if ep := <-w.grant; ep != nil {
			t.releaseLocked(ep, w.tokens)
		}
	case waiting:
		w.state = cancelled
		heap.Remove(&p.waiters, w.index)
		t.queueChanged(p)
	}
}

// dispatch hands free endpoints to the best waiters. Lock held.
func (t *Table) dispatch(p *Pool) {
	if len(p.waiters) == 0 {
		return
	}
	now := time.Now()
	changed := false
	for len(p.waiters) > 0 {
		ep := p.pick(now, nil)
		if ep == nil {
			break
		}
		w := heap.Pop(&p.waiters).(*waiter)
		ep.inFlight++
		ep.inFlightTokens += w.tokens
		w.state = granted
		w.grant <- ep
		changed = true
	}
	if changed {
		t.queueChanged(p)
	}
}

func (t *Table) queueChanged(p *Pool) {
	if t.onQueue != nil {
		t.onQueue(p.Name, len(p.waiters))
	}
}

func (t *Table) release(ep *Endpoint, tokens int) {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.releaseLocked(ep, tokens)
}

func (t *Table) releaseLocked(ep *Endpoint, tokens int) {
	ep.inFlight--
	ep.inFlightTokens -= tokens
	ep.busyUntil = time.Time{} // one of ours finished: it has room again
	for _, p := range ep.pools {
		t.dispatch(p)
	}
}

// markDown / markBusy skip an endpoint for a while, then let its pools' waiters at it.
func (t *Table) markDown(ep *Endpoint) { t.skip(ep, downFor, true) }
func (t *Table) markBusy(ep *Endpoint) { t.skip(ep, busyFor, false) }

func (t *Table) skip(ep *Endpoint, d time.Duration, down bool) {
	t.mu.Lock()
	until := time.Now().Add(d)
	if down {
		ep.downUntil = until
	} else {
		ep.busyUntil = until
	}
	t.mu.Unlock()
	time.AfterFunc(d+time.Millisecond, func() {
		t.mu.Lock()
		defer t.mu.Unlock()
		for _, p := range ep.pools {
			t.dispatch(p)
		}
	})
}
