package main

import (
	"context"
	"errors"
	"io"
	"net"
	"net/http"
	"os"
	"testing"
	"time"
)

// pair is a loopback TCP connection: the accepted end stamped, the dialled end plain.
func pair(t *testing.T) (*stampConn, net.Conn) {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	client, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = client.Close() })
	accepted, err := ln.Accept()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = accepted.Close() })
	s, ok := stamped(accepted).(*stampConn)
	if !ok {
		t.Fatal("the kernel refused SO_TIMESTAMPNS on a loopback TCP socket")
	}
	// The kernel turns receive stamps on for the whole stack a moment after the first socket asks
	// (a deferred static key): until then a read has no stamp and falls back to its own time.
	for deadline := time.Now().Add(2 * time.Second); ; {
		if _, err := client.Write([]byte("w")); err != nil {
			t.Fatal(err)
		}
		if _, err := s.Read(make([]byte, 8)); err != nil {
			t.Fatal(err)
		}
		if _, ok := timestampOf(s.oob[:s.oobn]); ok {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("no receive stamp on a loopback TCP socket within 2 s")
		}
		time.Sleep(5 * time.Millisecond)
	}
	return s, client
}

// The time of bytes read late is when they arrived, not when the read returned.
func TestAReadLateIsTimedWhenItsBytesArrived(t *testing.T) {
	s, client := pair(t)
	const late = 60 * time.Millisecond
	for i := range 3 { // a fresh stamp on every read
		sent := time.Now()
		if _, err := client.Write([]byte("POST / HTTP/1.1\r\n")); err != nil {
			t.Fatal(err)
		}
		time.Sleep(late)
		buf := make([]byte, 64)
		n, err := s.Read(buf)
		read := time.Now()
		if err != nil || string(buf[:n]) != "POST / HTTP/1.1\r\n" {
			t.Fatalf("read %d: %q, %v", i, buf[:n], err)
		}
		got := receivedAt(s)
		if got.Before(sent) || got.Sub(sent) > late/3 {
			t.Fatalf("read %d: received %v after the write, want well under %v (read returned %v after)",
				i, got.Sub(sent), late/3, read.Sub(sent))
		}
	}
}

// Reads keep net.Conn's meaning: deadlines time out as net errors, a close by the peer is io.EOF.
func TestAStampedConnectionReadsAsAnyConnection(t *testing.T) {
	s, client := pair(t)
	_ = s.SetReadDeadline(time.Now().Add(20 * time.Millisecond))
	_, err := s.Read(make([]byte, 8))
	var ne net.Error
	if !errors.As(err, &ne) || !ne.Timeout() || !errors.Is(err, os.ErrDeadlineExceeded) {
		t.Fatalf("a read past its deadline: %v, want a timeout", err)
	}
	_ = s.SetReadDeadline(time.Time{})
	if _, err := client.Write([]byte("abc")); err != nil {
		t.Fatal(err)
	}
	_ = client.Close()
	got, err := io.ReadAll(s)
	if err != nil || string(got) != "abc" {
		t.Fatalf("read to the peer's close: %q, %v", got, err)
	}
	_ = s.Close()
	if _, err := s.Read(make([]byte, 8)); !errors.Is(err, net.ErrClosed) {
		t.Fatalf("a read after close: %v, want net.ErrClosed", err)
	}
}

func TestTimestampOfIgnoresWhatIsNotAStamp(t *testing.T) {
	if _, ok := timestampOf(nil); ok {
		t.Fatal("no control message, yet a stamp")
	}
	if _, ok := timestampOf(make([]byte, 16)); ok { // a header whose length is 0
		t.Fatal("a malformed control message, yet a stamp")
	}
}

// The core's connections carry the stamps: a request's arrival and an upstream answer's last byte.
func TestArrivalsAndUpstreamAnswersAreTimedByTheKernel(t *testing.T) {
	pair(t) // the kernel's stamps are on
	inner, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ln := arrivalListener{inner} // as main.go serves
	defer ln.Close()

	// arrival: a request's bytes, read late, are timed when they came
	client, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer client.Close()
	conn, err := ln.Accept()
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	sent := time.Now()
	if _, err := client.Write([]byte("POST /v1/chat/completions HTTP/1.1\r\n")); err != nil {
		t.Fatal(err)
	}
	time.Sleep(60 * time.Millisecond)
	if _, err := conn.Read(make([]byte, 64)); err != nil {
		t.Fatal(err)
	}
	if got := arrival(withArrival(context.Background(), conn)); got.Sub(sent) > 20*time.Millisecond {
		t.Fatalf("arrival %v after the write, want its kernel stamp (under 20ms)", got.Sub(sent))
	}

	// upstream: the answer's last byte is stamped, after the request's last byte was written
	upstream, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer upstream.Close()
	go func() {
		c, err := upstream.Accept()
		if err != nil {
			return
		}
		defer c.Close()
		if _, err := c.Read(make([]byte, 4096)); err == nil {
			_, _ = c.Write([]byte("HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"))
		}
	}()
	resp, up, stop, err := newUpstreams().do(context.Background(), upstream.Addr().String(), "/x", http.Header{},
		[]byte("{}"), time.Now().Add(5*time.Second))
	if err != nil {
		t.Fatal(err)
	}
	defer stop()
	if _, err := io.ReadAll(resp.Body); err != nil {
		t.Fatal(err)
	}
	_ = resp.Body.Close()
	if _, ok := up.nc.(*stampConn); !ok {
		t.Fatalf("upstream connection %T has no receive stamps", up.nc)
	}
	if got := receivedAt(up.nc); got.Before(up.sent) || time.Since(got) > time.Second {
		t.Fatalf("answer received %v after the request was sent", got.Sub(up.sent))
	}
}
