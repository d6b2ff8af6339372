package main

import (
	"context"
	"errors"
	"log/slog"
	"net"
	"net/http"
	"sync"
	"time"
)

// Go's server reads its header and idle timeouts for every connection from fields that may not change
// while it serves. So a change of clientTimeoutSeconds starts a new server for the connections that come
// next; the old one accepts no more, and its connections end under the timeouts they started with.

// generation is one server's share of the listener: the connections accepted while it is the newest.
type generation struct {
	net.Listener // the shared one, for Addr
	conns        <-chan net.Conn
	done         chan struct{}
	once         sync.Once
}

func (g *generation) Accept() (net.Conn, error) {
	select {
	case c, ok := <-g.conns:
		if !ok {
			return nil, net.ErrClosed
		}
		return c, nil
	case <-g.done:
		return nil, net.ErrClosed
	}
}

// Close stops this generation's accepting only; the shared listener closes in serveLive.
func (g *generation) Close() error {
	g.once.Do(func() { close(g.done) })
	return nil
}

// serveLive serves ln with handler until ctx ends, each new connection under the clientTimeoutSeconds of
// timeout() when it came (checked every `every`); then shuts every server down within `grace`.
func serveLive(ctx context.Context, ln net.Listener, handler http.Handler, timeout func() time.Duration,
	every, grace time.Duration) error {
	conns := make(chan net.Conn)
	accepted := make(chan error, 1)
	go func() { // the one accept loop, handing connections to the newest server
		defer close(conns)
		backoff := 5 * time.Millisecond
		for {
			c, err := ln.Accept()
			if err != nil {
				if errors.Is(err, net.ErrClosed) || ctx.Err() != nil {
					accepted <- err
					return
				}
				// Out of descriptors and the like: wait and try again, as net/http's Serve does.
				slog.Warn("accept", "error", err.Error(), "retry in", backoff.String())
				select {
				case <-ctx.Done():
				case <-time.After(backoff):
				}
				backoff = min(2*backoff, time.Second)
				continue
			}
			backoff = 5 * time.Millisecond
			select {
			case conns <- c:
			case <-ctx.Done():
				_ = c.Close()
			}
		}
	}()
	// The servers are started and stopped from this goroutine alone.
	var (
		servers []*http.Server
		current *generation
		wg      sync.WaitGroup
	)
	start := func(d time.Duration) {
		srv := &http.Server{Handler: handler, ReadHeaderTimeout: d, IdleTimeout: d, ConnContext: withArrival}
		g := &generation{Listener: ln, conns: conns, done: make(chan struct{})}
		if current != nil {
			_ = current.Close()
		}
		current = g
		servers = append(servers, srv)
		wg.Add(1)
		go func() {
			defer wg.Done()
			if err := srv.Serve(g); err != nil && !errors.Is(err, http.ErrServerClosed) &&
				!errors.Is(err, net.ErrClosed) {
				slog.Error("serve", "error", err.Error())
			}
		}()
	}
	last := timeout()
	start(last)
	tick := time.NewTicker(every)
	defer tick.Stop()
	var err error
loop:
	for {
		select {
		case <-ctx.Done():
			break loop
		case err = <-accepted:
			break loop
		case <-tick.C:
			if d := timeout(); d != last {
				slog.Info("client timeout changed: new connections get it", "seconds", d.Seconds())
				last = d
				start(d)
			}
		}
	}
	_ = ln.Close()
	shut, cancel := context.WithTimeout(context.Background(), grace)
	defer cancel()
	for _, srv := range servers {
		_ = srv.Shutdown(shut)
	}
	wg.Wait()
	return err
}
