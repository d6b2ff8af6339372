package main

import (
	"context"
	"errors"
	"io"
	"net"
	"net/http"
	"os"
	"sync/atomic"
	"syscall"
	"testing"
	"time"
)

// A half-sent request head waits for the header timeout of the server it reached.
func openHead(t *testing.T, addr string) net.Conn {
	t.Helper()
	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = c.Close() })
	if _, err := c.Write([]byte("POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\n")); err != nil {
		t.Fatal(err)
	}
	return c
}

// closedWithin: the server closed c within d (a read ends in EOF or a reset, not in our deadline).
func closedWithin(c net.Conn, d time.Duration) bool {
	_ = c.SetReadDeadline(time.Now().Add(d))
	_, err := io.ReadAll(c)
	return !errors.Is(err, os.ErrDeadlineExceeded)
}

// A change of clientTimeoutSeconds reaches the connections that come after it, without a restart; a
// connection keeps the timeouts it started with.
func TestAClientTimeoutChangeReachesNewConnections(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	var timeout atomic.Int64
	timeout.Store(int64(5 * time.Second))
	ctx, cancel := context.WithCancel(context.Background())
	served := make(chan error, 1)
	handler := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { _, _ = w.Write([]byte("ok")) })
	go func() {
		served <- serveLive(ctx, arrivalListener{ln}, handler,
			func() time.Duration { return time.Duration(timeout.Load()) }, 20*time.Millisecond, time.Second)
	}()
	addr := ln.Addr().String()

	before := openHead(t, addr)
	if closedWithin(before, 300*time.Millisecond) {
		t.Fatal("a connection closed under a 5 s header timeout")
	}
	timeout.Store(int64(200 * time.Millisecond))
	time.Sleep(100 * time.Millisecond) // the change is seen within `every`
	after := openHead(t, addr)
	if !closedWithin(after, 2*time.Second) {
		t.Fatal("a connection opened after the change to 0.2 s was not closed by its header timeout")
	}
	if closedWithin(before, 300*time.Millisecond) {
		t.Fatal("the connection from before the change lost its 5 s header timeout")
	}

	// Both servers answer whole requests, and stop with the context.
	for _, d := range []time.Duration{200 * time.Millisecond, 5 * time.Second} {
		timeout.Store(int64(d))
		time.Sleep(100 * time.Millisecond)
		resp, err := http.Post("http://"+addr+"/v1/chat/completions", "application/json", nil)
		if err != nil {
			t.Fatal(err)
		}
		body, _ := io.ReadAll(resp.Body)
		_ = resp.Body.Close()
		if string(body) != "ok" {
			t.Fatalf("answer %q", body)
		}
	}
	cancel()
	select {
	case err := <-served:
		if err != nil {
			t.Fatalf("serveLive: %v", err)
		}
	case <-time.After(3 * time.Second):
		t.Fatal("serveLive did not stop within its grace")
	}
	if _, err := net.Dial("tcp", addr); err == nil {
		t.Fatal("the listener is still open after the stop")
	}
}

// failingOnce fails its first Accept as a process out of descriptors does.
type failingOnce struct {
	net.Listener
	failed atomic.Bool
}

func (l *failingOnce) Accept() (net.Conn, error) {
	if !l.failed.Swap(true) {
		return nil, &net.OpError{Op: "accept", Net: "tcp", Err: os.NewSyscallError("accept4", syscall.EMFILE)}
	}
	return l.Listener.Accept()
}

// An accept that fails for want of descriptors is retried, as net/http's own Serve does, not fatal.
func TestAFailedAcceptIsRetried(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	served := make(chan error, 1)
	handler := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { _, _ = w.Write([]byte("ok")) })
	go func() {
		served <- serveLive(ctx, &failingOnce{Listener: ln}, handler,
			func() time.Duration { return time.Second }, time.Second, time.Second)
	}()
	resp, err := http.Get("http://" + ln.Addr().String() + "/")
	if err != nil {
		t.Fatalf("no answer after a failed accept: %v", err)
	}
	_ = resp.Body.Close()
	select {
	case err := <-served:
		t.Fatalf("serveLive stopped: %v", err)
	default:
	}
}
