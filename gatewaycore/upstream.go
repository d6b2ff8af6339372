package main

import (
	"bufio"
	"context"
	"errors"
	"io"
	"net"
	"net/http"
	"os"
	"strconv"
	"sync"
	"sync/atomic"
	"syscall"
	"time"
)

// keepIdle: a connection idle longer than this is not reused (servers close idle keep-alive
// connections; aiohttp after 15 s by default), so a request never races a server's close.
const keepIdle = 10 * time.Second

// upstreams is a lean HTTP/1.1 client for the endpoints: keep-alive connections per host, the request
// head and body in one write, the answer read with net/http's own parser. net/http's Transport hands
// every request to two goroutines per connection; on a 2-core machine those wake-ups cost more than the
// proxying itself (profile in docs/gateway-performance.md).
type upstreams struct {
	mu      sync.Mutex
	idle    map[string][]*upConn
	connect atomic.Int64 // the connect timeout, ns
}

type upConn struct {
	nc    net.Conn
	br    *bufio.Reader
	bw    *bufio.Writer
	host  string
	since time.Time // back in the pool since
	sent  time.Time // the last request left for the upstream: the upstream's own time starts
}

func newUpstreams() *upstreams {
	u := &upstreams{idle: map[string][]*upConn{}}
	u.connect.Store(int64(2 * time.Second))
	return u
}

func (u *upstreams) get(host string) *upConn {
	u.mu.Lock()
	defer u.mu.Unlock()
	conns := u.idle[host]
	for len(conns) > 0 {
		c := conns[len(conns)-1]
		conns = conns[:len(conns)-1]
		if time.Since(c.since) < keepIdle {
			u.idle[host] = conns
			return c
		}
		_ = c.nc.Close()
	}
	u.idle[host] = conns
	return nil
}

func (u *upstreams) put(c *upConn) {
	c.since = time.Now()
	u.mu.Lock()
	defer u.mu.Unlock()
	u.idle[c.host] = append(u.idle[c.host], c)
}

// connectError: the endpoint could not be reached (it is marked down; another one is tried).
type connectError struct{ err error }

func (e connectError) Error() string { return "connect: " + e.err.Error() }

// do sends a POST to host+path and reads the answer's head by `answerBy`; ctx ending aborts it, until
// the caller calls the returned stop. The body closes the connection unless it was read to its end
// (then it goes back to the pool).
func (u *upstreams) do(ctx context.Context, host, path string, header http.Header, body []byte,
	answerBy time.Time) (*http.Response, *upConn, func() bool, error) {
	for try := 0; ; try++ {
		c := u.get(host)
		reused := c != nil
		if c == nil {
			d := net.Dialer{Timeout: time.Duration(u.connect.Load()), KeepAlive: 30 * time.Second}
			nc, err := d.DialContext(ctx, "tcp", host)
			if err != nil {
				return nil, nil, nil, connectError{err}
			}
			nc = stamped(nc) // the answer's last byte is timed by the kernel's stamp (stamp_linux.go)
			c = &upConn{nc: nc, br: bufio.NewReaderSize(nc, 16*1024), bw: bufio.NewWriterSize(nc, 8*1024), host: host}
		}
		nc := c.nc
		stop := context.AfterFunc(ctx, func() { _ = nc.SetDeadline(time.Unix(1, 0)) })
		resp, err := c.roundTrip(host, path, header, body, answerBy)
		if err == nil {
			resp.Body = &upBody{body: resp.Body, conn: c, pool: u, keep: !resp.Close}
			return resp, c, stop, nil
		}
		stop()
		_ = c.nc.Close()
		// A reused connection the server had closed answers nothing at all: try once on a new one.
		if reused && try == 0 && ctx.Err() == nil && errors.Is(err, errNothingRead) {
			continue
		}
		return nil, nil, nil, err
	}
}

var errNothingRead = errors.New("connection closed before any answer")

func (c *upConn) roundTrip(host, path string, header http.Header, body []byte,
	answerBy time.Time) (*http.Response, error) {
	_ = c.nc.SetDeadline(answerBy)
	w := c.bw
	_, _ = w.WriteString("POST ")
	_, _ = w.WriteString(path)
	_, _ = w.WriteString(" HTTP/1.1\r\nHost: ")
	_, _ = w.WriteString(host)
	_, _ = w.WriteString("\r\nContent-Length: ")
	_, _ = w.WriteString(strconv.Itoa(len(body)))
	_, _ = w.WriteString("\r\n")
	for k, vs := range header {
		for _, v := range vs {
			_, _ = w.WriteString(k)
			_, _ = w.WriteString(": ")
			_, _ = w.WriteString(v)
			_, _ = w.WriteString("\r\n")
		}
	}
	_, _ = w.WriteString("\r\n")
	_, _ = w.Write(body)
	c.sent = time.Now() // as the write starts: the kernel may hand over its answer before the write returns
	if err := w.Flush(); err != nil {
		return nil, errNothingRead
	}
	if _, err := c.br.Peek(1); err != nil {
		if errors.Is(err, io.EOF) || errors.Is(err, syscall.ECONNRESET) {
			return nil, errNothingRead
		}
		return nil, err
	}
	return http.ReadResponse(c.br, nil) // the body's reads keep answerBy unless the caller moves it
}

// upBody returns the connection to the pool once the answer was read to its end.
type upBody struct {
	body io.ReadCloser
	conn *upConn
	pool *upstreams
	keep bool
	done bool
}

func (b *upBody) Read(p []byte) (int, error) {
	n, err := b.body.Read(p)
	if err == io.EOF {
		b.done = true
	}
	return n, err
}

func (b *upBody) Close() error {
	if b.conn == nil {
		return nil
	}
	_ = b.body.Close()
	if b.done && b.keep {
		b.pool.put(b.conn)
	} else {
		_ = b.conn.nc.Close() // not read to its end: TGI sees the close and stops generating
	}
	b.conn = nil
	return nil
}

func isTimeout(err error) bool {
	var ne net.Error
	return errors.As(err, &ne) && ne.Timeout() || errors.Is(err, os.ErrDeadlineExceeded)
}
