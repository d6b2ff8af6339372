//go:build !linux

package main

import (
	"net"
	"time"
)

// Receive stamps are Linux's (stamp_linux.go); elsewhere the latencies start when a read returns.

func stamped(c net.Conn) net.Conn { return c }

func receivedAt(net.Conn) time.Time { return time.Now() }
