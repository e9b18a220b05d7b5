package firewall

import (
	"time"

	"github.com/ftpguard/ftpguard/limiter"
	"github.com/ftpguard/ftpguard/nftset"
)

// The nftables backend (kind "nftables"): the Runner's goroutine keeps the
// bans in the table of package nftset. Its results are counted like the
// commands' (ftpguard_firewall_commands_total): a ban is an Add (or, at
// start, the Sync), an unban a Remove.

// openNft opens the table and syncs it to initial (the bans in force at
// start). A failure is logged and counted as failed bans; the proxy goes
// on refusing banned addresses itself, and every later change tries to
// open the table again (then syncing only the changes from there).
func (f *Runner) openNft(initial []limiter.Ban) {
	if f.observe() {
		f.log.Info("observe: would sync the nftables table", "table", f.nft.Table, "bans", len(initial))
		return
	}
	start := time.Now()
	set, err := nftset.Open(*f.nft)
	if err == nil {
		err = set.Sync(initial, time.Now())
		if err != nil {
			set.Close()
		}
	}
	f.mu.Lock()
	if err == nil {
		f.counts[0].ok += uint64(len(initial))
	} else {
		f.counts[0].failed += uint64(max(len(initial), 1))
	}
	f.mu.Unlock()
	if err != nil {
		f.log.Error("nftables table could not be set up; bans are enforced by the proxy only", "table", f.nft.Table, "err", err)
		return
	}
	f.set = set
	f.log.Info("nftables table synced", "table", f.nft.Table, "bans", len(initial), "drop_rule", f.nft.DropRule,
		"ports", f.nft.Ports, "took", time.Since(start).Round(time.Millisecond))
}

// closeNft closes the table (deleting it with remove_on_exit).
func (f *Runner) closeNft() {
	if f.set == nil {
		return
	}
	if err := f.set.Close(); err != nil {
		f.log.Warn("nftables table could not be removed", "table", f.nft.Table, "err", err)
	}
	f.set = nil
}

// doNft applies one job to the table, and logs and counts the result.
func (f *Runner) doNft(j fwJob) {
	now := time.Now()
	if !j.unban && !j.ban.Active(now) {
		return // over while it waited: nothing to push
	}
	log := f.log.With("action", j.action(), "key", j.ban.Key.String(), "table", f.nft.Table)
	if j.expired {
		log = log.With("expired", true)
	}
	if f.observe() {
		log.Info("observe: would change the nftables table")
		return
	}
	var err error
	if f.set == nil {
		if set, oerr := nftset.Open(*f.nft); oerr != nil {
			err = oerr
		} else {
			f.set = set
			log.Info("nftables table set up after an earlier failure; bans made before are in the proxy only until restart")
		}
	}
	if f.set != nil {
		if j.unban {
			err = f.set.Remove(j.ban.Key, now)
		} else {
			err = f.set.Add(j.ban.Key, j.ban.Until, now)
		}
	}
	f.mu.Lock()
	c := f.counter(j)
	if err == nil {
		c.ok++
	} else {
		c.failed++
	}
	f.mu.Unlock()
	if err != nil {
		log.Warn("nftables change failed", "err", err)
		return
	}
	log.Debug("nftables change", "until", j.ban.Until.Format(time.RFC3339), "took", time.Since(now).Round(time.Microsecond))
}
