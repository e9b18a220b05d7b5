//go:build !unix

package firewall

import "os/exec"

// killGroupOnCancel: without process groups, the command alone is killed.
func killGroupOnCancel(cmd *exec.Cmd) {}
