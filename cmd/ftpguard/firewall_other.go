//go:build !unix

package main

import "os/exec"

// killGroupOnCancel: without process groups, the command alone is killed.
func killGroupOnCancel(cmd *exec.Cmd) {}
