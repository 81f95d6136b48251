/**
 * `clock`: Keycloak's clock against this host's, read from the `Date` header of an answer already
 * fetched. Tokens carry Keycloak's time in `iat` and `exp`; beyond `clock_tolerance_sec` of drift,
 * fresh tokens look issued in the future or already expired, and logins fail.
 */
import { settingName } from '../lib/config/settings.js'
import type { DoctorContext } from './context.js'
import { fail, pass, type Verdict } from './report.js'

export async function checkClock ({ config, discovery, keySet }: DoctorContext): Promise<Verdict> {
  // The discovery answer when there is one (this check needs it to have passed), else the key set's.
  const sample = await discovery() ?? await keySet()
  if ('failure' in sample) return fail('not measured: Keycloak did not answer', 'fix jwks first')
  const serverTime = Date.parse(sample.answer.headers!.date ?? '')
  if (Number.isNaN(serverTime)) {
    // Not a failure of the setup: nothing to compare with. Said plainly rather than guessed.
    return pass('not measured: Keycloak\'s answer has no Date header (compare both hosts\' clocks by hand)')
  }
  // `Date` has whole seconds: Keycloak's time was somewhere in that second, at some moment of the
  // round trip. Only a drift beyond that uncertainty and the tolerance fails the check.
  const { sentAt, receivedAt } = sample
  const driftSec = (serverTime + 500 - (sentAt + receivedAt) / 2) / 1000
  const uncertaintySec = 0.5 + (receivedAt - sentAt) / 2000
  const tolerance = config.clockToleranceSec
  const drift = Math.round(Math.abs(driftSec))
  if (Math.abs(driftSec) - uncertaintySec <= tolerance) {
    return pass(`Keycloak's clock is within ${Math.max(drift, 1)} s of this host's (tolerance ${tolerance} s)`)
  }
  return fail(
    `Keycloak's clock is ${drift} s ${driftSec > 0 ? 'ahead of' : 'behind'} this host's, beyond the ${tolerance} s tolerance: fresh tokens look issued in the future or expired`,
    `synchronise both hosts' clocks (NTP: chrony, systemd-timesyncd); raising ${settingName('clockToleranceSec')} only hides the drift`
  )
}
