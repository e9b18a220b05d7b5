//go:build !linux

package main

import (
	"errors"
	"time"
)

func currentTimerSlack() time.Duration { return 0 }

// setTimerSlack: the timer slack is a Linux setting.
func setTimerSlack(time.Duration) (int, error) {
	return 0, errors.New("timer slack is a Linux setting")
}
