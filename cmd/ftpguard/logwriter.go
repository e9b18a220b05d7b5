package main

import (
	"io"
	"os"
)

// logWriter returns what the log lines go to: w itself, unless w is
// standard error and that is a socket (systemd's journal) or a pipe (a
// container runtime's log reader) on Linux; then a writer that offers each
// line to the kernel first with a non-blocking write made as a raw system
// call (see lineWriter).
func logWriter(w io.Writer) io.Writer {
	if f, ok := w.(*os.File); ok && f == os.Stderr {
		if lw := newLineWriter(f); lw != nil {
			return lw
		}
	}
	return w
}
