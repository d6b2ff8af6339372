package main

import (
	"context"
	"net"
	"sync/atomic"
	"time"
)

// The metrics' times start at a request's arrival: when bytes of it last reached the connection, before
// the head is parsed (as the Python gateway's `http_server.arrival`), not when the handler starts; by the
// kernel's receive stamp where there is one (stamp_linux.go), so the core's wake-up counts too.
var started = time.Now() // arrivals are kept as monotonic offsets from it

type arrivalKey struct{}

// arrivalConn notes when a read last returned bytes, and whether the last request line named an OpenAI
// route (malformed.go).
type arrivalConn struct {
	net.Conn
	last   atomic.Int64 // ns since `started`
	openai atomic.Bool
}

func (c *arrivalConn) Read(b []byte) (int, error) {
	n, err := c.Conn.Read(b)
	if n > 0 {
		c.last.Store(int64(receivedAt(c.Conn).Sub(started)))
		c.noteRoute(b[:n])
	}
	return n, err
}

type arrivalListener struct{ net.Listener }

func (l arrivalListener) Accept() (net.Conn, error) {
	c, err := l.Listener.Accept()
	if err != nil {
		return nil, err
	}
	return &arrivalConn{Conn: stamped(c)}, nil
}

// withArrival is the server's ConnContext: the request's context can reach its connection's clock.
func withArrival(ctx context.Context, c net.Conn) context.Context {
	if ac, ok := c.(*arrivalConn); ok {
		return context.WithValue(ctx, arrivalKey{}, ac)
	}
	return ctx
}

// arrival of the request whose context this is; now when unknown.
func arrival(ctx context.Context) time.Time {
	if ac, ok := ctx.Value(arrivalKey{}).(*arrivalConn); ok {
		if last := ac.last.Load(); last > 0 {
			return started.Add(time.Duration(last))
		}
	}
	return time.Now()
}
