import { MemoryDirectory, type UserDirectory } from '../../index.js'
import { DIRECTORY_METHODS } from '../../lib/directory/user-directory.js'

export type Method = typeof DIRECTORY_METHODS[number]
export const WRITES: Method[] = ['createUser', 'updateUser', 'updateUserGroups']

/**
 * A `MemoryDirectory` that records every call, and can be told to fail one method: what the login
 * pipeline does to the host's database, observed from the outside.
 */
export class CountingDirectory extends MemoryDirectory {
  calls: Method[] = []
  failing: Method | undefined

  constructor () {
    super()
    for (const method of DIRECTORY_METHODS) {
      const original = (MemoryDirectory.prototype as unknown as Record<string, (...args: unknown[]) => Promise<unknown>>)[method]
      ;(this as unknown as Record<string, unknown>)[method] = async (...args: unknown[]) => {
        this.calls.push(method)
        if (this.failing === method) throw new Error(`database down in ${method}`)
        return await original.apply(this, args)
      }
    }
  }

  writes (): Method[] {
    return this.calls.filter((method) => WRITES.includes(method))
  }
}

export type { UserDirectory }
