package main

import (
	"errors"
	"io"
	"net"
	"os"
	"sync"
	"sync/atomic"
	"syscall"
	"time"
	"unsafe"
)

// The latency metrics must count the time a request or an answer waited in the kernel for the core to
// wake up and read it: on a VM with 2 vCPUs about 50 µs, twice per request (the request, then the
// upstream's answer), a large part of what a client sees the core add. A time taken when read() returns
// cannot see it. So the core's TCP connections ask the kernel to stamp what it receives (SO_TIMESTAMPNS)
// and read with recvmsg: a read's bytes reached the socket at that stamp.

// maxLag bounds the stamp's distance from the read: a wall clock stepped between the two gives the
// read's own time instead.
const maxLag = time.Second

// stampConn is a TCP connection whose reads note when the kernel received the last bytes they returned.
type stampConn struct {
	net.Conn // a *net.TCPConn; embedded as the interface, so its WriteTo cannot read past Read
	raw      syscall.RawConn
	rx       atomic.Int64 // the kernel's receipt of the last bytes read, ns since `started` (monotonic)

	mu   sync.Mutex // one read at a time: the fields below carry its arguments and results
	read func(fd uintptr) bool
	buf  []byte
	oob  [64]byte // room for one SCM_TIMESTAMPNS message
	n    int
	oobn int
	err  error
}

// stamped is c with receive stamps, or c itself where the kernel does not stamp (not TCP, or refused).
func stamped(c net.Conn) net.Conn {
	tc, ok := c.(*net.TCPConn)
	if !ok {
		return c
	}
	raw, err := tc.SyscallConn()
	if err != nil {
		return c
	}
	var serr error
	if err := raw.Control(func(fd uintptr) {
		serr = syscall.SetsockoptInt(int(fd), syscall.SOL_SOCKET, syscall.SO_TIMESTAMPNS, 1)
	}); err != nil || serr != nil {
		return c
	}
	s := &stampConn{Conn: tc, raw: raw}
	s.read = s.recvmsg
	return s
}

// recvmsg is the read's system call; false asks RawConn.Read to wait until the socket is readable.
func (s *stampConn) recvmsg(fd uintptr) bool {
	for {
		s.n, s.oobn, _, _, s.err = syscall.Recvmsg(int(fd), s.buf, s.oob[:], 0)
		if s.err != syscall.EINTR {
			return s.err != syscall.EAGAIN
		}
	}
}

func (s *stampConn) Read(b []byte) (int, error) {
	if len(b) == 0 {
		return 0, nil
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	s.buf = b
	err := s.raw.Read(s.read)
	s.buf = nil
	if err != nil { // a deadline or a close, as net.Conn's Read words them
		var oe *net.OpError
		if errors.As(err, &oe) {
			oe.Op = "read"
		}
		return 0, err
	}
	if s.err != nil {
		return 0, &net.OpError{Op: "read", Net: "tcp", Source: s.LocalAddr(), Addr: s.RemoteAddr(),
			Err: os.NewSyscallError("recvmsg", s.err)}
	}
	if s.n == 0 {
		return 0, io.EOF
	}
	now := time.Now()
	at := now
	if kernel, ok := timestampOf(s.oob[:s.oobn]); ok {
		// Wall clock against wall clock (Round(0) drops the monotonic reading), over a short span.
		if lag := now.Round(0).Sub(kernel); lag >= 0 && lag < maxLag {
			at = now.Add(-lag)
		}
	}
	s.rx.Store(int64(at.Sub(started)))
	return s.n, nil
}

// receivedAt is when the kernel received the last bytes read from c (their read's time when it gave no
// stamp): now for a connection without stamps.
func receivedAt(c net.Conn) time.Time {
	if s, ok := c.(*stampConn); ok {
		if rx := s.rx.Load(); rx > 0 {
			return started.Add(time.Duration(rx))
		}
	}
	return time.Now()
}

// timestampOf finds the SCM_TIMESTAMPNS message among a recvmsg's control messages.
func timestampOf(oob []byte) (time.Time, bool) {
	head := syscall.CmsgLen(0)
	for len(oob) >= head {
		h := (*syscall.Cmsghdr)(unsafe.Pointer(&oob[0]))
		size := int(h.Len)
		if size < head || size > len(oob) {
			return time.Time{}, false
		}
		if h.Level == syscall.SOL_SOCKET && h.Type == syscall.SCM_TIMESTAMPNS &&
			size >= head+int(unsafe.Sizeof(syscall.Timespec{})) {
			ts := (*syscall.Timespec)(unsafe.Pointer(&oob[head]))
			return time.Unix(int64(ts.Sec), int64(ts.Nsec)), true
		}
		next := syscall.CmsgSpace(size - head)
		if next > len(oob) {
			break
		}
		oob = oob[next:]
	}
	return time.Time{}, false
}
