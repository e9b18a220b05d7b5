package main

import (
	"bytes"
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"runtime"
	"testing"
	"time"
)

// TestLineWriter: over a pipe and a socket, lines reach the reader whole
// and in order, also while the reader is behind (the non-blocking write
// leaves the rest to the file's own write); a regular file gets no
// lineWriter.
func TestLineWriter(t *testing.T) {
	if runtime.GOOS != "linux" {
		t.Skip("lineWriter is Linux's")
	}
	pipe := func(t *testing.T) (w *os.File, r io.Reader) {
		pr, pw, err := os.Pipe()
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { pr.Close(); pw.Close() })
		return pw, pr
	}
	socket := func(t *testing.T) (w *os.File, r io.Reader) {
		ln, err := net.Listen("unix", filepath.Join(t.TempDir(), "journal"))
		if err != nil {
			t.Fatal(err)
		}
		defer ln.Close()
		c, err := net.Dial("unix", ln.Addr().String())
		if err != nil {
			t.Fatal(err)
		}
		s, err := ln.Accept()
		if err != nil {
			t.Fatal(err)
		}
		f, err := c.(*net.UnixConn).File() // a blocking descriptor, as a journal's stderr is
		c.Close()
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { f.Close(); s.Close() })
		return f, s
	}
	for _, tc := range []struct {
		name string
		open func(*testing.T) (*os.File, io.Reader)
	}{{"pipe", pipe}, {"socket", socket}} {
		t.Run(tc.name, func(t *testing.T) {
			f, r := tc.open(t)
			w := newLineWriter(f)
			if w == nil {
				t.Fatal("no lineWriter for a " + tc.name)
			}
			var want bytes.Buffer
			for i := range 20000 { // ~1 MiB: more than the pipe or socket holds
				fmt.Fprintf(&want, `{"msg":"login ok","session":%d,"user":"alice"}`+"\n", i)
			}
			got := make(chan []byte)
			go func() {
				time.Sleep(50 * time.Millisecond) // the reader is behind
				b, _ := io.ReadAll(io.LimitReader(r, int64(want.Len())))
				got <- b
			}()
			for line := range bytes.Lines(want.Bytes()) {
				if n, err := w.Write(line); n != len(line) || err != nil {
					t.Fatalf("Write = %d, %v", n, err)
				}
			}
			if b := <-got; !bytes.Equal(b, want.Bytes()) {
				t.Fatalf("the reader got %d bytes, not the %d written in order", len(b), want.Len())
			}
		})
	}
	t.Run("file", func(t *testing.T) {
		f, err := os.Create(filepath.Join(t.TempDir(), "log"))
		if err != nil {
			t.Fatal(err)
		}
		defer f.Close()
		if w := newLineWriter(f); w != nil {
			t.Fatalf("newLineWriter(regular file) = %T, want nil", w)
		}
	})
}
