// Command tgipool-gateway-core is the gateway's compiled data plane: it serves the common generation
// request (parse, count tokens, route, queue, proxy, stream) and hands every other request to the
// Python gateway, which stays the control plane and sends the core its routing table (the protocol:
// operator/tgipool/gateway/core_link.py).
package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/url"
	"os"
	"os/signal"
	"runtime"
	"runtime/debug"
	"runtime/pprof"
	"syscall"
	"time"
)

const firstSnapshotWithin = 60 * time.Second

func main() {
	listen := flag.String("listen", ":8080", "address the gateway serves clients on")
	python := flag.String("python", "", "URL of the Python gateway on loopback (required)")
	every := flag.Duration("report-interval", time.Second, "how often measurements go to the Python gateway")
	count := flag.Bool("count-tokens", false, "read a JSON list of strings on stdin, print their approximate "+
		"token counts (the routing count) as a JSON list, and exit")
	procs := flag.Int("procs", 1, "cores the core may use at once (GOMAXPROCS); one per gateway replica "+
		"measured cheapest per request: add replicas (the gateway's HPA) for more")
	profile := flag.String("cpuprofile", "", "write a CPU profile to this file until the core stops (for tuning)")
	flag.Usage = func() {
		fmt.Fprintf(flag.CommandLine.Output(), "usage: tgipool-gateway-core --python URL [--listen ADDR]\n\n"+
			"The gateway's compiled data plane; `tgipool gateway --core BIN` starts it.\n\n")
		flag.PrintDefaults()
	}
	flag.Parse()
	slog.SetDefault(slog.New(slog.NewJSONHandler(os.Stderr, nil)))
	if *count {
		os.Exit(countTokens(os.Stdin, os.Stdout))
	}
	base, err := url.Parse(*python)
	if *python == "" || err != nil || base.Host == "" {
		fmt.Fprintln(os.Stderr, "error: --python must be the Python gateway's URL, e.g. http://127.0.0.1:8081")
		os.Exit(2)
	}
	runtime.GOMAXPROCS(max(1, *procs))
	// The heap is a few MB of short-lived request objects: collecting at 5x its live size instead of 2x
	// cuts the collector's share of each request without a memory cost that matters.
	debug.SetGCPercent(400)
	if *profile != "" {
		f, err := os.Create(*profile)
		if err == nil && pprof.StartCPUProfile(f) == nil {
			defer pprof.StopCPUProfile()
		}
	}
	core := NewCore(base)
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
	defer stop()
	client := &http.Client{Timeout: 60 * time.Second}
	go exitWithParent(stop)
	go core.Follow(ctx, client, base.JoinPath("/internal/core/snapshot").String())
	go core.metrics.Report(ctx, client, base.JoinPath("/internal/core/report").String(), *every)
	// Listen once the first snapshot is here: the connection timeouts are its clientTimeoutSeconds (a
	// later change reaches the connections that come after it: serve.go).
	for wait := time.Now().Add(firstSnapshotWithin); core.table.Snapshot() == nil; time.Sleep(10 * time.Millisecond) {
		if time.Now().After(wait) || ctx.Err() != nil {
			slog.Error("no snapshot from the Python gateway", "within", firstSnapshotWithin.String())
			os.Exit(1)
		}
	}
	listener, err := net.Listen("tcp", *listen)
	if err != nil {
		slog.Error("listen", "address", *listen, "error", err.Error())
		os.Exit(1)
	}
	slog.Info("serving", "listen", *listen, "python", base.String())
	clientTimeout := func() time.Duration { return seconds(core.table.Snapshot().ClientTimeout) }
	if err := serveLive(ctx, arrivalListener{listener}, core, clientTimeout, time.Second, 10*time.Second); err != nil &&
		!errors.Is(err, net.ErrClosed) {
		slog.Error("serve", "error", err.Error())
		pprof.StopCPUProfile()
		os.Exit(1)
	}
}

// Follow long-polls Python for snapshots until ctx ends; until the first, every request goes to Python.
func (c *Core) Follow(ctx context.Context, client *http.Client, snapshotURL string) {
	var version int64 = -1
	backoff := 100 * time.Millisecond
	for ctx.Err() == nil {
		s, err := fetch(ctx, client, fmt.Sprintf("%s?after=%d&wait=20", snapshotURL, version))
		switch {
		case err != nil:
			slog.Warn("no snapshot", "error", err.Error())
			select {
			case <-ctx.Done():
			case <-time.After(backoff):
			}
			backoff = min(2*backoff, 2*time.Second)
		case s != nil:
			backoff = 100 * time.Millisecond
			c.Apply(s)
			version = s.Version
			slog.Info("snapshot", "version", s.Version, "pools", len(s.Pools))
		default:
			backoff = 100 * time.Millisecond
		}
	}
}

func fetch(ctx context.Context, client *http.Client, u string) (*Snapshot, error) {
	req, _ := http.NewRequestWithContext(ctx, http.MethodGet, u, nil)
	resp, err := client.Do(req)
	if err != nil {
		return nil, err
	}
	defer func() { _ = resp.Body.Close() }()
	switch resp.StatusCode {
	case http.StatusNoContent:
		return nil, nil
	case http.StatusOK:
		var s Snapshot
		if err := json.NewDecoder(resp.Body).Decode(&s); err != nil {
			return nil, fmt.Errorf("snapshot: %w", err)
		}
		return &s, nil
	}
	b, _ := io.ReadAll(io.LimitReader(resp.Body, 512))
	return nil, fmt.Errorf("snapshot: HTTP %d: %s", resp.StatusCode, b)
}

func countTokens(in io.Reader, out io.Writer) int {
	var texts []string
	if err := json.NewDecoder(in).Decode(&texts); err != nil {
		fmt.Fprintln(os.Stderr, "error: stdin must be a JSON list of strings:", err)
		return 2
	}
	counts := make([]int, len(texts))
	for i, t := range texts {
		counts[i] = approxTokens(t)
	}
	_ = json.NewEncoder(out).Encode(counts)
	return 0
}

// exitWithParent stops the core when the process that started it (the Python gateway) is gone, so a
// killed gateway never leaves a core serving an outdated table.
func exitWithParent(stop func()) {
	parent := os.Getppid()
	for range time.Tick(time.Second) {
		if os.Getppid() != parent {
			slog.Error("the Python gateway is gone; stopping")
			stop()
			return
		}
	}
}
