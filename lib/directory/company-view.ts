/**
 * One company's view of a directory, for `login.sso_explain` (SPEC section 11): an admin of a company
 * explains logins into that company, and must learn nothing of another tenant. Rather than filter the
 * explanation (and miss a field), the explanation is computed against a directory in which every
 * other company, its users, groups and whitelist entries do not exist: the answer for another
 * company's user is then, by construction, the answer for an address nobody has.
 *
 * The view is read-only: it offers only what a login plan reads, so nothing explained through it can
 * write.
 */
import type { DirectoryReads, WhitelistEntry } from './user-directory.js'

/** `@domain`: an address that is nobody's, which the UserDirectory contract matches by its domain alone; `null` without a domain. */
function domainProbe (email: string): string | null {
  const at = email.lastIndexOf('@')
  return at < 0 ? null : email.slice(at)
}

export function companyView (directory: DirectoryReads, company: string): DirectoryReads {
  const own = <T extends { company: string }>(found: T | null): T | null => found !== null && found.company === company ? found : null
  return {
    getCompany: async (id) => id === company ? await directory.getCompany(id) : null,
    findUserByIdentity: async (provider, subject) => own(await directory.findUserByIdentity(provider, subject)),
    findUserByEmail: async (email) => own(await directory.findUserByEmail(email)),
    findWhitelistEntry: async (email): Promise<WhitelistEntry | null> => {
      // An entry for the exact address wins over its domain's. When the address's entry is another
      // company's, a directory without that company would answer with the domain's entry, so that
      // is asked too. Both are asked every time, so neither the answer nor the number of queries
      // tells an address another company whitelists from one nobody does.
      const probe = domainProbe(email)
      const [byAddress, byDomain] = await Promise.all([directory.findWhitelistEntry(email), probe === null ? null : directory.findWhitelistEntry(probe)])
      return byAddress !== null && byAddress.company !== company ? own(byDomain) : own(byAddress)
    },
    findGroupsByName: async (id, names, opts) => id === company ? await directory.findGroupsByName(id, names, opts) : [],
    listUserGroups: async (id, userId) => id === company ? await directory.listUserGroups(id, userId) : []
  }
}
